//! The agent's state directory: its identity (key pair, node id and token),
//! what it applied beyond the interface (firewall, bypass routes, kernel
//! settings it turned on) and the last config it applied. Every file is
//! written whole (temporary file, fsync, rename) with mode 0600.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use meshplane_sdk::proto as pb;
use prost::Message;
use serde::{Deserialize, Serialize};

use super::plan::{Bypass, Create, Family, FirewallSpec, Sysctl};

/// Who this host is in its network.
#[derive(Clone, Serialize, Deserialize)]
pub struct Identity {
    /// The node's id.
    pub node_id: String,
    /// The node's network.
    pub network: String,
    /// The node's name.
    pub name: String,
    /// The server it registered with.
    pub server: String,
    /// The WireGuard interface it manages.
    pub interface: String,
    /// WireGuard private key (base64). Never leaves the host.
    pub private_key: String,
    /// WireGuard public key (base64).
    pub public_key: String,
    /// The node token.
    pub node_token: String,
    /// How the agent made the interface, when it did (`down` deletes only
    /// an interface the agent made).
    #[serde(default)]
    pub created: Option<Create>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id)
            .field("network", &self.network)
            .field("name", &self.name)
            .field("server", &self.server)
            .field("interface", &self.interface)
            .field("public_key", &self.public_key)
            .field("private_key", &"<redacted>")
            .field("node_token", &"<redacted>")
            .field("created", &self.created)
            .finish()
    }
}

/// What the agent applied that the host cannot tell apart from anyone
/// else's: recorded so it can be changed and removed exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Firewall restored per family.
    #[serde(default)]
    pub firewall: BTreeMap<Family, FirewallSpec>,
    /// Bypass routes added.
    #[serde(default)]
    pub bypass: BTreeSet<Bypass>,
    /// Kernel settings the agent turned on.
    #[serde(default)]
    pub sysctl_ours: BTreeSet<Sysctl>,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

const IDENTITY: &str = "identity.json";
const APPLIED: &str = "applied.json";
const CONFIG: &str = "config.pb";
const PENDING_KEY: &str = "pending.key";

impl StateDir {
    /// Opens (and makes, mode 0700) the directory.
    pub fn open(dir: &Path) -> Result<Self, String> {
        fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        Ok(StateDir {
            dir: dir.to_path_buf(),
        })
    }

    /// Takes the directory for this process (an exclusive `flock` on
    /// `DIR/lock`, released when the returned file closes): `agent down`
    /// while `agent run` works on the same host, or two runs, would undo
    /// each other.
    pub fn lock(&self) -> Result<fs::File, String> {
        use std::os::fd::AsRawFd;
        let path = self.dir.join("lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(format!(
                "another meshctl agent is using {} (stop it first)",
                self.dir.display()
            ));
        }
        Ok(f)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let res = (|| -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(&self.dir)?.sync_all()
        })();
        res.map_err(|e| format!("writing {}: {e}", path.display()))
    }

    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        let path = self.dir.join(name);
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("reading {}: {e}", path.display())),
        }
    }

    fn remove(&self, name: &str) -> Result<(), String> {
        let path = self.dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("removing {}: {e}", path.display())),
        }
    }

    /// The identity, when the agent registered before.
    pub fn identity(&self) -> Result<Option<Identity>, String> {
        self.read(IDENTITY)?
            .map(|b| {
                serde_json::from_slice(&b).map_err(|e| {
                    format!(
                        "{}: not an agent identity: {e}",
                        self.dir.join(IDENTITY).display()
                    )
                })
            })
            .transpose()
    }

    /// Stores the identity.
    pub fn save_identity(&self, id: &Identity) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(id).map_err(|e| e.to_string())?;
        self.write(IDENTITY, &bytes)
    }

    /// Hands a node registered elsewhere (`meshctl quickstart vpn`) over to
    /// the agent: stores `id` unless this directory already holds that
    /// node's identity (which may record more, such as the interface the
    /// agent made). Returns whether it stored it.
    pub fn adopt(&self, mut id: Identity) -> Result<bool, String> {
        if let Some(have) = self.identity()? {
            if have.node_id == id.node_id && have.interface == id.interface {
                return Ok(false);
            }
            // Another node (registered anew): its config means nothing for
            // this one; what was applied on the host stays recorded so it is
            // still changed and removed exactly, and so does an interface
            // the agent made.
            self.remove(CONFIG)?;
            if have.interface == id.interface {
                id.created = have.created;
            }
        }
        self.save_identity(&id)?;
        Ok(true)
    }

    /// The private key generated for a registration that has not finished.
    pub fn pending_key(&self) -> Result<Option<String>, String> {
        Ok(self
            .read(PENDING_KEY)?
            .map(|b| String::from_utf8_lossy(&b).trim().to_owned()))
    }

    /// Keeps the private key of a registration about to be sent.
    pub fn save_pending_key(&self, private_key: &str) -> Result<(), String> {
        self.write(PENDING_KEY, format!("{private_key}\n").as_bytes())
    }

    /// The registration finished: its key is in the identity now.
    pub fn clear_pending_key(&self) -> Result<(), String> {
        self.remove(PENDING_KEY)
    }

    /// What the agent applied (empty when nothing was recorded).
    pub fn applied(&self) -> Result<Applied, String> {
        match self.read(APPLIED)? {
            Some(b) => serde_json::from_slice(&b)
                .map_err(|e| format!("{}: {e}", self.dir.join(APPLIED).display())),
            None => Ok(Applied::default()),
        }
    }

    /// Records what the agent applied.
    pub fn save_applied(&self, a: &Applied) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(a).map_err(|e| e.to_string())?;
        self.write(APPLIED, &bytes)
    }

    /// The last config applied, to resume from after a restart.
    pub fn config(&self) -> Option<pb::NodeConfig> {
        let bytes = self.read(CONFIG).ok()??;
        pb::NodeConfig::decode(bytes.as_slice()).ok()
    }

    /// Stores the config just applied.
    pub fn save_config(&self, cfg: &pb::NodeConfig) -> Result<(), String> {
        self.write(CONFIG, &cfg.encode_to_vec())
    }

    /// Forgets the applied state and the config (after a teardown); with
    /// `identity`, the identity too (the node is gone).
    pub fn clear(&self, identity: bool) -> Result<(), String> {
        self.remove(APPLIED)?;
        self.remove(CONFIG)?;
        if identity {
            self.remove(IDENTITY)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_private_and_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(&tmp.path().join("agent")).unwrap();
        assert!(dir.identity().unwrap().is_none());
        let id = Identity {
            node_id: "n1".into(),
            network: "corp".into(),
            name: "gw".into(),
            server: "http://127.0.0.1:50051".into(),
            interface: "wg0".into(),
            private_key: "PRIVATE".into(),
            public_key: "PUBLIC".into(),
            node_token: "mpn_secret".into(),
            created: Some(Create::Kernel),
        };
        dir.save_identity(&id).unwrap();
        let back = dir.identity().unwrap().unwrap();
        assert_eq!(back.node_token, "mpn_secret");
        assert_eq!(back.created, Some(Create::Kernel));
        let mode = fs::metadata(dir.path().join(IDENTITY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dbg = format!("{id:?}");
        assert!(
            !dbg.contains("PRIVATE") && !dbg.contains("mpn_secret"),
            "{dbg}"
        );

        let mut a = Applied::default();
        a.sysctl_ours.insert(Sysctl::Forward4);
        dir.save_applied(&a).unwrap();
        assert_eq!(dir.applied().unwrap(), a);
        let cfg = pb::NodeConfig {
            revision: 9,
            ..Default::default()
        };
        dir.save_config(&cfg).unwrap();
        assert_eq!(dir.config().unwrap().revision, 9);
        dir.clear(false).unwrap();
        assert!(dir.config().is_none());
        assert_eq!(dir.applied().unwrap(), Applied::default());
        assert!(dir.identity().unwrap().is_some());
        dir.clear(true).unwrap();
        assert!(dir.identity().unwrap().is_none());

        assert_eq!(dir.pending_key().unwrap(), None);
        dir.save_pending_key("PRIV").unwrap();
        assert_eq!(dir.pending_key().unwrap().as_deref(), Some("PRIV"));
        let mode = fs::metadata(dir.path().join(PENDING_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        dir.clear_pending_key().unwrap();
        assert_eq!(dir.pending_key().unwrap(), None);
    }

    #[test]
    fn one_agent_at_a_time_per_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        let held = dir.lock().unwrap();
        let err = dir.lock().unwrap_err();
        assert!(err.contains("another meshctl agent"), "{err}");
        drop(held);
        dir.lock().unwrap();
    }

    #[test]
    fn adopting_another_node_forgets_the_old_config_but_not_the_host_records() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        let id = |node: &str| Identity {
            node_id: node.into(),
            network: "vpn".into(),
            name: "gw".into(),
            server: "http://s".into(),
            interface: "mp-vpn".into(),
            private_key: "K".into(),
            public_key: "P".into(),
            node_token: "T".into(),
            created: None,
        };
        assert!(dir.adopt(id("n1")).unwrap());
        let mut agent_made = dir.identity().unwrap().unwrap();
        agent_made.created = Some(Create::Userspace("wireguard-go".into()));
        dir.save_identity(&agent_made).unwrap();
        dir.save_config(&pb::NodeConfig {
            revision: 4,
            ..Default::default()
        })
        .unwrap();
        let mut a = Applied::default();
        a.sysctl_ours.insert(Sysctl::Forward4);
        dir.save_applied(&a).unwrap();
        // The same node again: nothing changes.
        assert!(!dir.adopt(id("n1")).unwrap());
        assert_eq!(dir.config().unwrap().revision, 4);
        // A new node: its identity, no old config, the host records and the
        // interface the agent made kept.
        assert!(dir.adopt(id("n2")).unwrap());
        let now = dir.identity().unwrap().unwrap();
        assert_eq!(now.node_id, "n2");
        assert_eq!(now.created, Some(Create::Userspace("wireguard-go".into())));
        assert!(dir.config().is_none());
        assert_eq!(dir.applied().unwrap(), a);
    }
}
