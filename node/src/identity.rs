//! The node's identity on disk: which key store holds its keys, and the sealed keys.
//!
//! Layout of the data directory:
//!
//! - `node.cbor`: public facts (the public identity, the key store and why it was
//!   chosen, the TCTI for a TPM); nothing secret.
//! - `keys/node.key`: the node's secret keys, sealed by the key store.
//! - `keys/root.key`: with `init --root`, the keys of the root principal of a new tree,
//!   sealed by the same store.

use std::io::IsTerminal;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use keys::Identity;
use keys::keystore::{
    KeyStore, Passphrase, PlaintextStore, SealedFile, SoftwareStore, StoreKind, TpmStore,
    default_tcti,
};
use serde::{Deserialize, Serialize};

const NODE_FILE: &str = "node.cbor";
const KEY_FILE: &str = "keys/node.key";
const KEY_LABEL: &str = "node-key";
const ROOT_KEY_FILE: &str = "keys/root.key";
const ROOT_KEY_LABEL: &str = "root-key";
const NODE_FILE_VERSION: u16 = 1;
const MAX_NODE_FILE_BYTES: usize = 16 * 1024;

/// Where the passphrase of a software key store comes from.
#[derive(Debug, Clone, Default)]
pub(crate) struct PassphraseSource {
    /// A file holding it (one trailing newline is ignored).
    pub(crate) file: Option<PathBuf>,
    /// Its value from the environment (`BT_PASSPHRASE`).
    pub(crate) env: Option<String>,
}

/// What `init` was asked for.
#[derive(Debug, Clone)]
pub(crate) struct InitOptions {
    pub(crate) store: Option<StoreKind>,
    pub(crate) tcti: Option<String>,
    pub(crate) passphrase: PassphraseSource,
    pub(crate) force: bool,
    /// Also create a root principal that owns a new tree.
    pub(crate) root: bool,
}

/// Public facts about the node, kept beside its sealed keys.
#[derive(Debug, Serialize, Deserialize)]
struct NodeFile {
    version: u16,
    key_store: StoreKind,
    /// Why this key store was chosen, as said at `init`.
    reason: String,
    /// The TPM's TCTI, for the `tpm` store.
    tcti: Option<String>,
    public: keys::PublicIdentity,
    /// The root principal created with `init --root`, if any.
    #[serde(default)]
    root: Option<keys::PublicIdentity>,
}

/// A node identity, unsealed.
#[derive(Debug)]
pub(crate) struct NodeIdentity {
    pub(crate) identity: Identity,
    pub(crate) key_store: StoreKind,
    pub(crate) reason: String,
    pub(crate) tcti: Option<String>,
    /// The root principal's public identity, when this node created one.
    pub(crate) root_public: Option<keys::PublicIdentity>,
    /// The root principal's keys, when they were unsealed.
    pub(crate) root: Option<Identity>,
}

impl NodeIdentity {
    pub(crate) fn peer_id(&self) -> libp2p_identity::PeerId {
        self.identity.signing_key().peer_id()
    }
}

/// Creates a new identity in `data_dir`.
pub(crate) fn init(data_dir: &Path, options: &InitOptions) -> anyhow::Result<NodeIdentity> {
    let node_file = data_dir.join(NODE_FILE);
    let key_file = SealedFile::new(data_dir.join(KEY_FILE));
    if !options.force && (node_file.exists() || key_file.exists()) {
        bail!(
            "{} already holds a node identity; pass --force to replace it (the old keys are lost)",
            data_dir.display()
        );
    }
    // A tree's root key is the one thing nothing else can replace: never removed or
    // replaced without --force, even where the node's own files are gone.
    if !options.force && data_dir.join(ROOT_KEY_FILE).exists() {
        bail!(
            "{} holds a tree's root key ({}); pass --force to replace or remove it (the tree \
             can then never be written or shared again: back it up first)",
            data_dir.display(),
            data_dir.join(ROOT_KEY_FILE).display()
        );
    }
    let (kind, reason, tcti) = choose_store(options)?;
    let mut store = open_store(kind, tcti.as_deref(), &options.passphrase, true)?;
    let identity = Identity::generate();
    if !data_dir.exists() {
        std::fs::create_dir_all(data_dir)
            .and_then(|()| {
                std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
            })
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    }
    key_file.write(store.as_mut(), KEY_LABEL, &identity.to_secret_bytes())?;
    let root_file = SealedFile::new(data_dir.join(ROOT_KEY_FILE));
    let root = if options.root {
        let root = Identity::generate();
        root_file.write(store.as_mut(), ROOT_KEY_LABEL, &root.to_secret_bytes())?;
        Some(root)
    } else {
        if root_file.exists() {
            std::fs::remove_file(root_file.path())
                .with_context(|| format!("cannot remove {}", root_file.path().display()))?;
        }
        None
    };
    let root_public = root.as_ref().map(Identity::public);
    let record = NodeFile {
        version: NODE_FILE_VERSION,
        key_store: kind,
        reason: reason.clone(),
        tcti: tcti.clone(),
        public: identity.public(),
        root: root_public.clone(),
    };
    write_node_file(&node_file, &record)?;
    Ok(NodeIdentity {
        identity,
        key_store: kind,
        reason,
        tcti,
        root_public,
        root,
    })
}

/// Loads and unseals the identity in `data_dir` (and the root keys, with `with_root`).
/// `tcti` overrides the recorded one.
pub(crate) fn load(
    data_dir: &Path,
    tcti: Option<&str>,
    passphrase: &PassphraseSource,
    with_root: bool,
) -> anyhow::Result<NodeIdentity> {
    let node_path = data_dir.join(NODE_FILE);
    if !node_path.exists() {
        bail!(
            "no node identity in {}: run `btnode init` first",
            data_dir.display()
        );
    }
    let record = read_node_file(&node_path)?;
    let tcti = tcti.map(str::to_owned).or(record.tcti.clone());
    let mut store = open_store(record.key_store, tcti.as_deref(), passphrase, false)?;
    let key_file = SealedFile::new(data_dir.join(KEY_FILE));
    let secret = key_file.read(store.as_mut(), KEY_LABEL)?;
    let identity = Identity::from_secret_bytes(&secret)
        .with_context(|| format!("key file {} holds no valid keys", key_file.path().display()))?;
    if identity.principal() != record.public.principal() {
        bail!(
            "key file {} holds the keys of {}, but {} says this node is {}",
            key_file.path().display(),
            identity.principal(),
            node_path.display(),
            record.public.principal()
        );
    }
    let root = match (&record.root, with_root) {
        (Some(public), true) => {
            let root_file = SealedFile::new(data_dir.join(ROOT_KEY_FILE));
            let secret = root_file.read(store.as_mut(), ROOT_KEY_LABEL)?;
            let root = Identity::from_secret_bytes(&secret).with_context(|| {
                format!(
                    "key file {} holds no valid keys",
                    root_file.path().display()
                )
            })?;
            if root.principal() != public.principal() {
                bail!(
                    "key file {} does not hold the keys of root {}",
                    root_file.path().display(),
                    public.principal()
                );
            }
            Some(root)
        }
        _ => None,
    };
    Ok(NodeIdentity {
        identity,
        key_store: record.key_store,
        reason: record.reason,
        tcti,
        root_public: record.root,
        root,
    })
}

/// Picks the key store for `init`, and says why.
fn choose_store(options: &InitOptions) -> anyhow::Result<(StoreKind, String, Option<String>)> {
    let tcti = options.tcti.clone().unwrap_or_else(default_tcti);
    match options.store {
        Some(StoreKind::Tpm) => Ok((
            StoreKind::Tpm,
            format!("chosen with --key-store tpm ({tcti})"),
            Some(tcti),
        )),
        Some(kind) => Ok((kind, format!("chosen with --key-store {kind}"), None)),
        None => {
            // Prefer the TPM when one answers; otherwise keys live encrypted under a
            // passphrase.
            let explicit = options.tcti.is_some() || std::env::var_os("BT_TCTI").is_some();
            let device = tcti
                .strip_prefix("device:")
                .map(|d| Path::new(d).exists())
                .unwrap_or(true);
            if !explicit && !device {
                return Ok((
                    StoreKind::Software,
                    format!("default: no TPM found ({tcti} does not exist)"),
                    None,
                ));
            }
            match TpmStore::open(&tcti) {
                Ok(_) => Ok((
                    StoreKind::Tpm,
                    format!("default: a TPM answered at {tcti}"),
                    Some(tcti),
                )),
                Err(e) if explicit => Err(anyhow::Error::new(e).context(format!(
                    "the TPM given by --tcti/BT_TCTI ({tcti}) did not answer"
                ))),
                Err(e) => Ok((
                    StoreKind::Software,
                    format!("default: the TPM at {tcti} did not answer ({e})"),
                    None,
                )),
            }
        }
    }
}

fn open_store(
    kind: StoreKind,
    tcti: Option<&str>,
    passphrase: &PassphraseSource,
    confirm: bool,
) -> anyhow::Result<Box<dyn KeyStore>> {
    Ok(match kind {
        StoreKind::Software => Box::new(SoftwareStore::new(read_passphrase(passphrase, confirm)?)),
        StoreKind::Plaintext => {
            tracing::warn!(
                "the plaintext key store keeps the node key IN CLEAR; use it only for development"
            );
            Box::new(PlaintextStore)
        }
        StoreKind::Tpm => {
            let tcti = tcti.map(str::to_owned).unwrap_or_else(default_tcti);
            Box::new(TpmStore::open(&tcti)?)
        }
        other => bail!("key store {other} is not supported by this build"),
    })
}

fn read_passphrase(source: &PassphraseSource, confirm: bool) -> anyhow::Result<Passphrase> {
    let bytes = if let Some(path) = &source.file {
        let mut bytes = std::fs::read(path)
            .with_context(|| format!("cannot read passphrase file {}", path.display()))?;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        bytes
    } else if let Some(value) = &source.env {
        value.clone().into_bytes()
    } else if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("passphrase for the node key: ")
            .context("cannot read the passphrase from the terminal")?;
        if confirm {
            let again = rpassword::prompt_password("repeat the passphrase: ")
                .context("cannot read the passphrase from the terminal")?;
            if again != first {
                bail!("the passphrases differ");
            }
        }
        first.into_bytes()
    } else {
        bail!(
            "the software key store needs a passphrase: pass --passphrase-file, set \
             BT_PASSPHRASE, or run on a terminal (or choose --key-store tpm)"
        );
    };
    if bytes.is_empty() {
        bail!("the passphrase is empty");
    }
    Ok(Passphrase::new(bytes))
}

fn write_node_file(path: &Path, record: &NodeFile) -> anyhow::Result<()> {
    let bytes = keys::cbor::to_vec(record)?;
    crate::atomic::write(path, &bytes).with_context(|| format!("cannot write {}", path.display()))
}

fn read_node_file(path: &Path) -> anyhow::Result<NodeFile> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if len > MAX_NODE_FILE_BYTES as u64 {
        bail!("{} is corrupt: {len} bytes is too large", path.display());
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let record: NodeFile = keys::cbor::from_slice(&bytes, MAX_NODE_FILE_BYTES)
        .with_context(|| format!("{} is corrupt", path.display()))?;
    if record.version != NODE_FILE_VERSION {
        bail!("{} has unknown version {}", path.display(), record.version);
    }
    record
        .public
        .verify()
        .with_context(|| format!("{} is corrupt", path.display()))?;
    Ok(record)
}
