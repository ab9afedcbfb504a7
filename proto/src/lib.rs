//! Generated types and gRPC stubs of the `meshplane.v1` API.
//!
//! Client stubs are behind the `client` feature and server stubs behind the
//! `server` feature, so SDK and CLI users never compile server code.

use std::fmt;

pub mod codec;
pub mod delta;

/// The `meshplane.v1` package.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("meshplane.v1");
}

/// Encoded `FileDescriptorSet` of every meshplane proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/meshplane_descriptor.bin"));

/// Full service names (as in `/package.Service/Method`) of every meshplane
/// service.
pub const SERVICE_NAMES: &[&str] = &[
    "meshplane.v1.NetworkService",
    "meshplane.v1.EnrollmentKeyService",
    "meshplane.v1.NodeService",
    "meshplane.v1.GatewayService",
    "meshplane.v1.ExtClientService",
    "meshplane.v1.DnsService",
    "meshplane.v1.AgentService",
    "meshplane.v1.EventService",
    "meshplane.v1.PolicyService",
];

const REDACTED: &str = "<redacted>";

fn redact(s: &str) -> &'static str {
    if s.is_empty() { "" } else { REDACTED }
}

impl fmt::Debug for v1::EnrollmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollmentKey")
            .field("id", &self.id)
            .field("token", &redact(&self.token))
            .field("networks", &self.networks)
            .field("uses_remaining", &self.uses_remaining)
            .field("unlimited", &self.unlimited)
            .field("expire_time", &self.expire_time)
            .field("create_time", &self.create_time)
            .field("description", &self.description)
            .finish()
    }
}

impl fmt::Debug for v1::RegisterRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisterRequest")
            .field("enrollment_key", &redact(&self.enrollment_key))
            .field("network", &self.network)
            .field("name", &self.name)
            .field("public_key", &self.public_key)
            .field("endpoint", &self.endpoint)
            .field("listen_port", &self.listen_port)
            .field("os", &self.os)
            .finish()
    }
}

impl fmt::Debug for v1::RegisterResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisterResponse")
            .field("node", &self.node)
            .field("node_token", &redact(&self.node_token))
            .finish()
    }
}

impl fmt::Debug for v1::GetExtClientConfigResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The config may hold the client's private key.
        f.debug_struct("GetExtClientConfigResponse")
            .field("config", &redact(&self.config))
            .field("revision", &self.revision)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::v1;

    #[test]
    fn secrets_are_hidden_from_debug() {
        let k = v1::EnrollmentKey {
            token: "mpk_secret".into(),
            ..Default::default()
        };
        let r = v1::RegisterResponse {
            node: None,
            node_token: "mpn_secret".into(),
        };
        let c = v1::GetExtClientConfigResponse {
            config: "PrivateKey = abc".into(),
            revision: 1,
        };
        for s in [format!("{k:?}"), format!("{r:?}"), format!("{c:?}")] {
            assert!(!s.contains("secret") && !s.contains("abc"), "{s}");
            assert!(s.contains("<redacted>"), "{s}");
        }
    }
}
