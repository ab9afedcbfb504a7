//! Every gRPC method this server serves, read from the descriptor sets it
//! serves reflection from: which ones stream (exempt from the unary deadline
//! and concurrency limit, timed differently in metrics), and a bounded set
//! of method labels for metrics (a path no service has is `unknown`).

use std::{collections::HashMap, sync::Arc};

use prost::Message;

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Method {
    /// `package.Service/Method`, the metrics label.
    pub label: Arc<str>,
    /// Whether the request or the response is a stream.
    pub streaming: bool,
    /// A method of meshplane's own API (`meshplane.v1`), not health or
    /// reflection.
    pub api: bool,
}

/// The methods of every service the server runs.
#[derive(Debug)]
pub struct Methods {
    by_path: HashMap<String, Method>,
    unknown: Method,
}

impl Methods {
    /// Reads meshplane's, health's and reflection's descriptor sets.
    pub fn load() -> Arc<Methods> {
        let mut by_path = HashMap::new();
        for set in [
            meshplane_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ] {
            let set = prost_types::FileDescriptorSet::decode(set)
                .expect("the descriptor sets compiled into the server are valid");
            for file in set.file {
                let package = file.package();
                for service in &file.service {
                    for m in &service.method {
                        let label = format!("{package}.{}/{}", service.name(), m.name());
                        by_path.insert(
                            format!("/{label}"),
                            Method {
                                label: label.into(),
                                streaming: m.client_streaming() || m.server_streaming(),
                                api: package.starts_with("meshplane."),
                            },
                        );
                    }
                }
            }
        }
        Arc::new(Methods {
            by_path,
            unknown: Method {
                label: "unknown".into(),
                streaming: false,
                api: false,
            },
        })
    }

    /// The method a request path names (`unknown` for none).
    pub fn get(&self, path: &str) -> &Method {
        self.by_path.get(path).unwrap_or(&self.unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_methods_come_from_the_descriptors() {
        let m = Methods::load();
        let watch = m.get("/meshplane.v1.AgentService/WatchConfig");
        assert!(watch.streaming && watch.api);
        assert!(m.get("/meshplane.v1.EventService/WatchEvents").streaming);
        assert!(m.get("/grpc.health.v1.Health/Watch").streaming);
        let create = m.get("/meshplane.v1.NetworkService/CreateNetwork");
        assert!(!create.streaming && create.api);
        assert_eq!(&*create.label, "meshplane.v1.NetworkService/CreateNetwork");
        let check = m.get("/grpc.health.v1.Health/Check");
        assert!(!check.streaming && !check.api);
        assert_eq!(&*m.get("/nope.Service/Method").label, "unknown");
    }
}
