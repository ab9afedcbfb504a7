//! Nodes: registration, updates, deletion, status reports.

use super::Service;
use crate::domain::{
    Error, Result,
    host::StatusReportInput,
    node::{Node, NodePatch, NodeUpdateInput, RegistrationInput},
    token::{self, NewToken, TokenKind},
};
use crate::store::{NodeRegistration, Reported};

/// A registered node and its token, shown once.
pub struct Registered {
    /// The new node.
    pub node: Node,
    /// The node's token (only its hash is stored).
    pub token: String,
}

impl Service {
    /// Register: with a working enrollment key, a new node with the lowest
    /// free addresses.
    pub async fn register(
        &self,
        enrollment_key: &str,
        input: RegistrationInput,
    ) -> Result<Registered> {
        // Credentials first: nobody learns anything without a working key.
        let key_id = match token::parse(enrollment_key) {
            Some((TokenKind::Enrollment, id)) => id.to_owned(),
            _ => {
                return Err(Error::Unauthenticated(if enrollment_key.is_empty() {
                    "enrollment_key is required".into()
                } else {
                    "unknown or revoked enrollment key".into()
                }));
            }
        };
        let key = self.store.enrollment_key(&key_id, enrollment_key).await?;
        let now = crate::domain::now();
        key.check_usable(now)?;
        let registration = input.validate()?;
        key.admit(&registration.network, now)?;
        let token = NewToken::generate(TokenKind::Node);
        let node = self
            .write(self.store.register_node(&NodeRegistration {
                key_id: &key_id,
                key_token: enrollment_key,
                registration: &registration,
                node_id: uuid::Uuid::new_v4().to_string(),
                token: &token,
            }))
            .await?;
        Ok(Registered {
            node,
            token: token.secret,
        })
    }

    /// UpdateNode: the fields `mask` names.
    pub async fn update_node(
        &self,
        id: &str,
        input: &NodeUpdateInput,
        mask: &[String],
    ) -> Result<Node> {
        let patch = NodePatch::from_request(input, mask)?;
        self.write(self.store.update_node(id, &patch)).await
    }

    /// DeleteNode: frees its addresses and revokes its token.
    pub async fn delete_node(&self, id: &str) -> Result<Node> {
        self.write(self.store.delete_node(id)).await
    }

    /// ReportStatus: records what the agent reported; wakes the hub only
    /// when the report changed a config.
    pub async fn report_status(&self, node_id: &str, input: StatusReportInput) -> Result<Reported> {
        let report = input.validate(crate::domain::now())?;
        self.write_if(self.store.report_status(node_id, &report), |r| {
            r.config_changed
        })
        .await
    }
}
