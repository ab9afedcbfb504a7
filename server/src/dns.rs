//! The built-in DNS server (`meshplane serve --dns-listen ADDR`): an
//! authoritative resolver for every network's zone, answered from the hub
//! (so it follows the store without a restart), forwarding other names to
//! the networks' upstream resolvers.
//!
//! - `<name>.<network>`: A/AAAA of the node, external client or custom entry;
//!   NXDOMAIN for unknown names inside a zone.
//! - Names outside every zone: forwarded to the nameservers of the network
//!   whose range holds the asker, else to every network's nameservers; with
//!   none configured, REFUSED.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use hickory_server::{
    net::runtime::Time,
    proto::{
        op::{Message, Metadata, OpCode, ResponseCode},
        rr::{
            Name, RData, Record, RecordType,
            rdata::{A, AAAA},
        },
    },
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo, Server},
    zone_handler::MessageResponseBuilder,
};
use tokio::net::UdpSocket;

use crate::hub::{DnsAnswer, Hub};

/// TTL of answers from the zones: short, since they follow the store.
const TTL: u32 = 30;
/// How long an upstream gets to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// Options of the DNS server.
#[derive(Debug, Clone, Copy)]
pub struct DnsOptions {
    /// Port of the upstream resolvers (53 unless testing).
    pub upstream_port: u16,
}

impl Default for DnsOptions {
    fn default() -> Self {
        DnsOptions { upstream_port: 53 }
    }
}

struct Resolver {
    hub: Arc<Hub>,
    options: DnsOptions,
}

/// Serves DNS on `socket` until `stop` flips.
pub async fn serve(
    socket: UdpSocket,
    hub: Arc<Hub>,
    options: DnsOptions,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut server = Server::new(Resolver { hub, options });
    server.register_socket(socket);
    let _ = stop.wait_for(|s| *s).await;
    if let Err(e) = server.shutdown_gracefully().await {
        tracing::warn!(error = %e, "DNS server shutdown");
    }
}

impl Resolver {
    async fn forward(&self, request: &Request) -> Option<Message> {
        let upstreams = self.hub.upstreams_for(request.src().ip());
        for ip in upstreams {
            let target = SocketAddr::new(ip, self.options.upstream_port);
            match ask(target, request.as_slice()).await {
                Ok(m) => return Some(m),
                Err(e) => tracing::debug!(upstream = %target, error = %e, "upstream failed"),
            }
        }
        None
    }
}

async fn ask(target: SocketAddr, query: &[u8]) -> std::io::Result<Message> {
    let bind: SocketAddr = match target.ip() {
        IpAddr::V4(_) => "0.0.0.0:0".parse().expect("addr"),
        IpAddr::V6(_) => "[::]:0".parse().expect("addr"),
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(target).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(UPSTREAM_TIMEOUT, sock.recv(&mut buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
    Message::from_vec(&buf[..n])
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

#[async_trait::async_trait]
impl RequestHandler for Resolver {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let refuse = |code| builder.error_msg(&request.metadata, code);
        if request.metadata.op_code != OpCode::Query {
            return send(&mut response, refuse(ResponseCode::NotImp)).await;
        }
        let Ok(info) = request.request_info() else {
            let builder = MessageResponseBuilder::from_message_request(request);
            return send(
                &mut response,
                builder.error_msg(&request.metadata, ResponseCode::FormErr),
            )
            .await;
        };
        let qname: Name = info.query.name().into();
        let qtype = info.query.query_type();
        let mut metadata = Metadata::response_from_request(&request.metadata);
        match self.hub.dns_lookup(&qname.to_ascii()) {
            DnsAnswer::Found(rec) => {
                metadata.authoritative = true;
                let mut answers = Vec::new();
                if matches!(qtype, RecordType::A | RecordType::ANY)
                    && let Some(a) = rec.address
                {
                    answers.push(Record::from_rdata(qname.clone(), TTL, RData::A(A(a))));
                }
                if matches!(qtype, RecordType::AAAA | RecordType::ANY)
                    && let Some(a) = rec.address6
                {
                    answers.push(Record::from_rdata(qname.clone(), TTL, RData::AAAA(AAAA(a))));
                }
                let builder = MessageResponseBuilder::from_message_request(request);
                let msg = builder.build(metadata, answers.iter(), [], [], []);
                send(&mut response, msg).await
            }
            DnsAnswer::NoSuchName => {
                metadata.authoritative = true;
                metadata.response_code = ResponseCode::NXDomain;
                let builder = MessageResponseBuilder::from_message_request(request);
                send(&mut response, builder.build_no_records(metadata)).await
            }
            DnsAnswer::NotOurs => match self.forward(request).await {
                Some(up) => {
                    metadata.response_code = up.metadata.response_code;
                    metadata.recursion_available = true;
                    let builder = MessageResponseBuilder::from_message_request(request);
                    let msg = builder.build(
                        metadata,
                        up.answers.iter(),
                        up.authorities.iter(),
                        [],
                        up.additionals
                            .iter()
                            .filter(|r| r.record_type() != RecordType::OPT),
                    );
                    send(&mut response, msg).await
                }
                None => {
                    let builder = MessageResponseBuilder::from_message_request(request);
                    send(
                        &mut response,
                        builder.error_msg(&request.metadata, ResponseCode::Refused),
                    )
                    .await
                }
            },
        }
    }
}

async fn send<'a, R: ResponseHandler>(
    response: &mut R,
    msg: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
) -> ResponseInfo {
    match response.send_response(msg).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "sending a DNS response failed");
            let mut m = Metadata::new(
                0,
                hickory_server::proto::op::MessageType::Response,
                OpCode::Query,
            );
            m.response_code = ResponseCode::ServFail;
            hickory_server::proto::op::Header {
                metadata: m,
                counts: Default::default(),
            }
            .into()
        }
    }
}
