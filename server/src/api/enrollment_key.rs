//! EnrollmentKeyService.

use tonic::{Request, Response, Status};

use meshplane_proto::v1::{self as pb, enrollment_key_service_server::EnrollmentKeyService};

use super::{
    AppState,
    convert::{from_ts, ts},
    error::{IntoStatus, required},
};
use crate::domain::{
    Error,
    enrollment::{EnrollmentKey, EnrollmentKeyInput},
    page::PageRequest,
};

/// The EnrollmentKeyService implementation.
pub struct EnrollmentKeys(pub AppState);

pub fn to_pb(k: &EnrollmentKey) -> pb::EnrollmentKey {
    pb::EnrollmentKey {
        id: k.id.clone(),
        token: String::new(),
        networks: k.networks.iter().map(ToString::to_string).collect(),
        uses_remaining: k.uses_remaining,
        unlimited: k.unlimited,
        expire_time: k.expire_time.and_then(ts),
        create_time: ts(k.create_time),
        description: k.description.clone(),
    }
}

#[tonic::async_trait]
impl EnrollmentKeyService for EnrollmentKeys {
    #[tracing::instrument(skip_all)]
    async fn create_enrollment_key(
        &self,
        req: Request<pb::CreateEnrollmentKeyRequest>,
    ) -> Result<Response<pb::EnrollmentKey>, Status> {
        let k = req
            .into_inner()
            .enrollment_key
            .ok_or_else(|| required("enrollment_key"))?;
        let expire_time = match &k.expire_time {
            None => None,
            Some(t) => Some(from_ts(Some(t)).ok_or_else(|| {
                super::error::to_status(Error::invalid(
                    "enrollment_key.expire_time",
                    "not a valid timestamp",
                ))
            })?),
        };
        let created = self
            .0
            .service
            .create_enrollment_key(EnrollmentKeyInput {
                networks: k.networks,
                uses_remaining: k.uses_remaining,
                unlimited: k.unlimited,
                expire_time,
                description: k.description,
            })
            .await
            .status()?;
        let key = &created.key;
        tracing::info!(key = %key.id, networks = ?key.networks, "enrollment key created");
        let mut out = to_pb(key);
        out.token = created.secret;
        Ok(Response::new(out))
    }

    async fn list_enrollment_keys(
        &self,
        req: Request<pb::ListEnrollmentKeysRequest>,
    ) -> Result<Response<pb::ListEnrollmentKeysResponse>, Status> {
        let r = req.into_inner();
        let page = PageRequest::parse(r.page_size, &r.page_token).status()?;
        let network = super::network_filter("network", &r.network)?;
        let network = network.as_deref();
        let keys = self
            .0
            .service
            .list_enrollment_keys(network, &page)
            .await
            .status()?;
        let (keys, next_page_token) = page.finish(keys, |k| k.id.clone());
        Ok(Response::new(pb::ListEnrollmentKeysResponse {
            enrollment_keys: keys.iter().map(to_pb).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(key))]
    async fn delete_enrollment_key(
        &self,
        req: Request<pb::DeleteEnrollmentKeyRequest>,
    ) -> Result<Response<()>, Status> {
        let id = req.into_inner().id;
        if id.is_empty() {
            return Err(required("id"));
        }
        self.0.service.delete_enrollment_key(&id).await.status()?;
        tracing::info!(key = %id, "enrollment key revoked");
        Ok(Response::new(()))
    }
}
