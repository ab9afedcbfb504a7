//! Enrollment keys: who may register nodes, where, how often, until when.

use chrono::{DateTime, Utc};

use super::error::{Error, Result, Violations};
use super::names::DnsLabel;

/// A stored enrollment key (its token is never kept, only its hash).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EnrollmentKey {
    /// Record id.
    pub id: String,
    /// Networks it admits to.
    pub networks: Vec<DnsLabel>,
    /// Registrations left (ignored when unlimited).
    pub uses_remaining: u32,
    /// Any number of registrations.
    pub unlimited: bool,
    /// Stops working then.
    pub expire_time: Option<DateTime<Utc>>,
    /// Operator's label.
    pub description: String,
    /// Creation time.
    pub create_time: DateTime<Utc>,
}

/// CreateEnrollmentKey's fields as sent.
#[derive(Debug, Clone, Default)]
pub struct EnrollmentKeyInput {
    /// networks
    pub networks: Vec<String>,
    /// uses_remaining
    pub uses_remaining: u32,
    /// unlimited
    pub unlimited: bool,
    /// expire_time
    pub expire_time: Option<DateTime<Utc>>,
    /// description
    pub description: String,
}

const F: &str = "enrollment_key";

impl EnrollmentKeyInput {
    /// Validates into a key with the given id and time.
    pub fn validate(self, id: String, now: DateTime<Utc>) -> Result<EnrollmentKey> {
        let mut v = Violations::default();
        let mut networks = Vec::new();
        if self.networks.is_empty() {
            v.add(format!("{F}.networks"), "at least one network is required");
        }
        for (i, n) in self.networks.iter().enumerate() {
            if let Some(l) = v.check(DnsLabel::parse(
                &format!("{F}.networks[{i}]"),
                n,
                DnsLabel::NETWORK_MAX,
            )) && !networks.contains(&l)
            {
                networks.push(l);
            }
        }
        if !self.unlimited && self.uses_remaining == 0 {
            v.add(
                format!("{F}.uses_remaining"),
                "must be at least 1 unless unlimited is set",
            );
        }
        if let Some(t) = self.expire_time
            && t <= now
        {
            v.add(
                format!("{F}.expire_time"),
                format!("{} is not in the future", t.to_rfc3339()),
            );
        }
        if self.description.chars().count() > 256 {
            v.add(format!("{F}.description"), "at most 256 characters");
        }
        v.check(crate::domain::names::check_plain_text(
            &format!("{F}.description"),
            &self.description,
        ));
        v.finish()?;
        Ok(EnrollmentKey {
            id,
            networks,
            uses_remaining: if self.unlimited {
                0
            } else {
                self.uses_remaining
            },
            unlimited: self.unlimited,
            expire_time: self.expire_time,
            description: self.description,
            create_time: now,
        })
    }
}

impl EnrollmentKey {
    /// Whether the key may register a node in `network` now: UNAUTHENTICATED
    /// when it no longer works, PERMISSION_DENIED when it is not for that
    /// network.
    pub fn admit(&self, network: &DnsLabel, now: DateTime<Utc>) -> Result<()> {
        self.check_usable(now)?;
        if !self.networks.contains(network) {
            return Err(Error::PermissionDenied(format!(
                "enrollment key is not valid for network {:?}",
                network.as_str()
            )));
        }
        Ok(())
    }

    /// UNAUTHENTICATED when the key has expired or has no uses left.
    pub fn check_usable(&self, now: DateTime<Utc>) -> Result<()> {
        if let Some(t) = self.expire_time
            && t <= now
        {
            return Err(Error::Unauthenticated(format!(
                "enrollment key expired at {}",
                t.to_rfc3339()
            )));
        }
        if !self.unlimited && self.uses_remaining == 0 {
            return Err(Error::Unauthenticated(
                "enrollment key has no uses left".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn input() -> EnrollmentKeyInput {
        EnrollmentKeyInput {
            networks: vec!["corp".into(), "corp".into()],
            uses_remaining: 3,
            ..Default::default()
        }
    }

    #[test]
    fn networks_are_deduplicated_and_uses_required() {
        let k = input().validate("k".into(), Utc::now()).unwrap();
        assert_eq!(k.networks.len(), 1);
        let mut i = input();
        i.uses_remaining = 0;
        assert!(i.validate("k".into(), Utc::now()).is_err());
        let mut i = input();
        i.uses_remaining = 0;
        i.unlimited = true;
        assert!(i.validate("k".into(), Utc::now()).is_ok());
    }

    #[test]
    fn descriptions_are_counted_in_characters() {
        let mut i = input();
        i.description = "é".repeat(256);
        assert!(i.validate("k".into(), Utc::now()).is_ok());
        let mut i = input();
        i.description = "é".repeat(257);
        match i.validate("k".into(), Utc::now()) {
            Err(Error::InvalidArgument(v)) => assert_eq!(v[0].field, "enrollment_key.description"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn expiry_must_be_future_and_is_enforced() {
        let now = Utc::now();
        let mut i = input();
        i.expire_time = Some(now - Duration::seconds(1));
        assert!(i.validate("k".into(), now).is_err());
        let mut i = input();
        i.expire_time = Some(now + Duration::seconds(10));
        let k = i.validate("k".into(), now).unwrap();
        let corp = DnsLabel::parse("n", "corp", 32).unwrap();
        assert!(k.admit(&corp, now).is_ok());
        assert!(matches!(
            k.admit(&corp, now + Duration::seconds(11)),
            Err(Error::Unauthenticated(_))
        ));
        let other = DnsLabel::parse("n", "other", 32).unwrap();
        assert!(matches!(
            k.admit(&other, now),
            Err(Error::PermissionDenied(_))
        ));
    }
}
