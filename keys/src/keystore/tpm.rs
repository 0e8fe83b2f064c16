//! [`TpmStore`]: secrets sealed by a TPM 2.0, through `tss-esapi`. The design is
//! documented on [`TpmStore`], since this module is private.

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};
use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::response_code::Tss2ResponseCode;
use tss_esapi::constants::{PropertyTag, SessionType, StartupType, Tss2ResponseCodeKind};
use tss_esapi::handles::{KeyHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Auth, Digest, EccParameter, EccPoint, KeyedHashScheme, Private, Public, PublicBuffer,
    PublicEccParametersBuilder, PublicKeyRsa, PublicKeyedHashParameters,
    PublicRsaParametersBuilder, RsaExponent, SensitiveData, SymmetricDefinition,
    SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::{Context, WrapperErrorKind};
use zeroize::Zeroizing;

use super::{KeyStore, KeyStoreError, StoreKind};

/// The largest secret a TPM seals in one object (`MAX_SYM_DATA`).
pub(crate) const MAX_SECRET: usize = 128;

/// The TCTI used when no environment variable names one.
const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// The blob format version written by [`TpmStore::seal`].
const BLOB_VERSION: u16 = 1;

/// BLAKE3 context for deriving a sealed object's authValue from its label.
const AUTH_CONTEXT: &str = "blocktree keys 2025 tpm sealed object auth v1";

/// The TCTI to use when none is configured: the first non-empty of the environment
/// variables `BT_TCTI`, `TPM2TOOLS_TCTI` and `TCTI`, else `device:/dev/tpmrm0` (the
/// kernel's resource manager).
pub fn default_tcti() -> String {
    ["BT_TCTI", "TPM2TOOLS_TCTI", "TCTI"]
        .into_iter()
        .filter_map(|name| std::env::var(name).ok())
        .find(|value| !value.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_TCTI.to_owned())
}

/// Seals secrets of 1 to 128 bytes with a TPM 2.0.
///
/// A secret is sealed as a keyed-hash data object, a child of a primary storage key that
/// the TPM derives from its Owner hierarchy seed and a fixed template (ECC NIST P-256 with
/// AES-128-CFB; RSA-2048 if the TPM refuses ECC). The primary is never stored: every
/// operation creates it again, identical as long as the seed is, so a blob is useless on
/// another TPM or after the Owner hierarchy is cleared ([`KeyStoreError::WrongTpm`]).
///
/// The blob is CBOR holding the sealed object's marshalled `TPM2B_PUBLIC` and
/// `TPM2B_PRIVATE` (the TPM encrypts the latter under the primary), the label, and the
/// primary's name, which tells "another TPM" apart from "an altered blob"
/// ([`KeyStoreError::Tampered`]). The label is also bound into the object as its authValue
/// (a BLAKE3 derivation of the label), so a blob whose label field was rewritten still
/// fails in the TPM. That authValue is not a secret (anyone who knows the label can derive
/// it): the protection is the TPM itself, which never releases the primary. The object
/// has `noDA` set, so wrong labels do not count towards the TPM's dictionary-attack
/// lockout.
///
/// Commands that carry the secret run in an HMAC session salted with the primary key, with
/// parameter encryption, so the secret does not cross the TPM's bus (or the swtpm socket)
/// in clear. Nothing is written to disk.
///
/// `tss_esapi::Context` is not `Send`, so a store keeps only its TCTI configuration:
/// each operation opens a connection to the TPM, recreates the primary key (a few
/// milliseconds on swtpm; up to seconds on some hardware TPMs) and flushes every transient
/// object and session it made before returning, also on errors.
#[derive(Debug)]
pub struct TpmStore {
    tcti: String,
    conf: TctiNameConf,
    /// The primary template that worked last, tried first by the next seal.
    primary: Primary,
}

/// Which fixed template the primary storage key is created from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Primary {
    /// NIST P-256, AES-128-CFB: the TCG "SRK" template; fast to create.
    EccP256,
    /// RSA-2048, AES-128-CFB: for TPMs without ECC.
    Rsa2048,
}

/// What [`TpmStore::seal`] returns, CBOR-encoded.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedBlob {
    /// [`BLOB_VERSION`].
    version: u16,
    /// The label the secret was sealed for (also bound in the object's authValue).
    label: String,
    /// The template of the parent primary key.
    primary: Primary,
    /// The TPM name of the parent primary key when the secret was sealed.
    #[serde(with = "serde_bytes")]
    primary_name: Vec<u8>,
    /// Marshalled `TPM2B_PUBLIC` of the sealed object.
    #[serde(with = "serde_bytes")]
    public: Vec<u8>,
    /// Marshalled `TPM2B_PRIVATE` of the sealed object (encrypted by the TPM).
    #[serde(with = "serde_bytes")]
    private: Vec<u8>,
}

/// Just the version, read before the rest so that future versions get a clear error.
#[derive(Deserialize)]
struct Versioned {
    version: u16,
}

impl TpmStore {
    /// Opens the TPM named by `tcti`, such as `device:/dev/tpmrm0` or `swtpm:port=2321`
    /// (see [`default_tcti`]), and checks that it answers. Sends `TPM2_Startup` if the TPM
    /// was not started yet (a fresh simulator).
    pub fn open(tcti: &str) -> Result<TpmStore, KeyStoreError> {
        let conf = TctiNameConf::from_str(tcti).map_err(|e| KeyStoreError::Tpm {
            tcti: tcti.to_owned(),
            message: format!(
                "invalid TCTI ({}); expected for example device:/dev/tpmrm0 or \
                 swtpm:host=127.0.0.1,port=2321",
                describe(e)
            ),
        })?;
        let store = TpmStore {
            tcti: tcti.to_owned(),
            conf,
            primary: Primary::EccP256,
        };
        let mut ctx = store.context()?;
        let manufacturer = match ctx.get_tpm_property(PropertyTag::Manufacturer) {
            Err(e) if tpm_kind(e) == Some(Tss2ResponseCodeKind::Initialize) => {
                debug!(tcti, "TPM not started; sending TPM2_Startup(CLEAR)");
                ctx.startup(StartupType::Clear)
                    .map_err(|e| store.error("TPM2_Startup", e))?;
                ctx.get_tpm_property(PropertyTag::Manufacturer)
            }
            other => other,
        }
        .map_err(|e| store.error("reading the TPM manufacturer", e))?;
        let manufacturer = manufacturer
            .map(|m| {
                String::from_utf8_lossy(&m.to_be_bytes())
                    .trim_matches(|c: char| c == '\0' || c.is_whitespace())
                    .to_owned()
            })
            .unwrap_or_default();
        debug!(tcti, %manufacturer, "TPM opened");
        Ok(store)
    }

    /// The TCTI this store talks to.
    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    fn context(&self) -> Result<Context, KeyStoreError> {
        Context::new(self.conf.clone()).map_err(|e| KeyStoreError::Tpm {
            tcti: self.tcti.clone(),
            message: format!(
                "cannot connect ({}); is a TPM or swtpm there, and may this user use it?",
                describe(e)
            ),
        })
    }

    fn error(&self, what: &str, e: tss_esapi::Error) -> KeyStoreError {
        let mut message = format!("{what}: {}", describe(e));
        if matches!(
            tpm_kind(e),
            Some(Tss2ResponseCodeKind::ObjectMemory | Tss2ResponseCodeKind::SessionMemory)
        ) {
            message.push_str(
                " (the TPM is full of transient objects or sessions; without a resource \
                 manager, another client may have leaked them)",
            );
        }
        KeyStoreError::Tpm {
            tcti: self.tcti.clone(),
            message,
        }
    }

    /// Creates the primary storage key from the template of `primary`.
    fn create_primary(
        &self,
        ctx: &mut Context,
        primary: Primary,
    ) -> Result<KeyHandle, tss_esapi::Error> {
        let template = primary.template()?;
        let created = ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
        })?;
        Ok(created.key_handle)
    }

    /// Runs `f` with the transient object `handle`, then flushes it, whatever `f` returned.
    fn with_flushed<T>(
        &self,
        ctx: &mut Context,
        handle: KeyHandle,
        what: &'static str,
        f: impl FnOnce(&mut Context) -> Result<T, KeyStoreError>,
    ) -> Result<T, KeyStoreError> {
        let result = f(ctx);
        self.flush(ctx, handle.into(), what);
        result
    }

    /// Starts an HMAC session salted with `primary` (AES-128-CFB parameter encryption),
    /// runs `f` with it, and flushes it.
    fn with_session<T>(
        &self,
        ctx: &mut Context,
        primary: KeyHandle,
        f: impl FnOnce(&mut Context, AuthSession) -> Result<T, KeyStoreError>,
    ) -> Result<T, KeyStoreError> {
        let session = ctx
            .start_auth_session(
                Some(primary),
                None,
                None,
                SessionType::Hmac,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(|e| self.error("starting a salted session", e))?
            .ok_or_else(|| {
                self.error(
                    "starting a salted session",
                    tss_esapi::Error::WrapperError(WrapperErrorKind::WrongValueFromTpm),
                )
            })?;
        let result = f(ctx, session);
        self.flush(ctx, SessionHandle::from(session).into(), "session");
        result
    }

    /// Sets which parameters `session` encrypts in the next command: `decrypt` the first
    /// command parameter, `encrypt` the first response parameter.
    fn set_encryption(
        &self,
        ctx: &mut Context,
        session: AuthSession,
        decrypt: bool,
        encrypt: bool,
    ) -> Result<(), KeyStoreError> {
        let (attributes, mask) = SessionAttributesBuilder::new()
            .with_continue_session(true)
            .with_decrypt(decrypt)
            .with_encrypt(encrypt)
            .build();
        ctx.tr_sess_set_attributes(session, attributes, mask)
            .map_err(|e| self.error("setting session attributes", e))
    }

    fn flush(&self, ctx: &mut Context, handle: ObjectHandle, what: &'static str) {
        if let Err(e) = ctx.flush_context(handle) {
            warn!(tcti = %self.tcti, handle = what, error = %describe(e), "could not flush a TPM handle");
        }
    }

    /// Seals under the primary key `parent`, created from the template of `primary`.
    fn seal_under(
        &self,
        ctx: &mut Context,
        primary: Primary,
        parent: KeyHandle,
        label: &str,
        secret: &[u8],
    ) -> Result<SealedBlob, KeyStoreError> {
        let data = SensitiveData::try_from(secret.to_vec())
            .map_err(|e| KeyStoreError::Malformed(format!("secret: {}", describe(e))))?;
        let auth = label_auth(label).map_err(|e| self.error("deriving the authValue", e))?;
        let template = sealed_template().map_err(|e| self.error("building the template", e))?;
        let primary_name = ctx
            .tr_get_name(parent.into())
            .map_err(|e| self.error("reading the primary key's name", e))?;
        let created = self.with_session(ctx, parent, |ctx, session| {
            // Encrypts the sensitive area (the secret and its authValue) on the wire.
            self.set_encryption(ctx, session, true, false)?;
            ctx.execute_with_session(Some(session), |ctx| {
                ctx.create(parent, template, Some(auth), Some(data), None, None)
            })
            .map_err(|e| self.error("creating the sealed object", e))
        })?;
        let public = PublicBuffer::try_from(created.out_public)
            .and_then(|p| p.marshall())
            .map_err(|e| self.error("marshalling the sealed object's public area", e))?;
        Ok(SealedBlob {
            version: BLOB_VERSION,
            label: label.to_owned(),
            primary,
            primary_name: primary_name.value().to_vec(),
            public,
            private: marshal_private(&created.out_private),
        })
    }

    /// Unseals the loaded sealed object `object` in `session`.
    fn unseal_loaded(
        &self,
        ctx: &mut Context,
        session: AuthSession,
        object: KeyHandle,
        auth: Auth,
    ) -> Result<SensitiveData, KeyStoreError> {
        ctx.tr_set_auth(object.into(), auth)
            .map_err(|e| self.error("setting the authValue", e))?;
        // Encrypts the secret on its way back.
        self.set_encryption(ctx, session, false, true)?;
        ctx.execute_with_session(Some(session), |ctx| ctx.unseal(object.into()))
            .map_err(|e| match tpm_kind(e) {
                // The blob's label field matched, so it was rewritten after sealing.
                Some(Tss2ResponseCodeKind::BadAuth | Tss2ResponseCodeKind::AuthFail) => {
                    KeyStoreError::Tampered
                }
                _ => self.error("unsealing", e),
            })
    }
}

impl KeyStore for TpmStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Tpm
    }

    fn seal(&mut self, label: &str, secret: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        if secret.is_empty() || secret.len() > MAX_SECRET {
            // A TPM refuses empty sealed data (it would generate the data itself).
            return Err(KeyStoreError::Malformed(format!(
                "a TPM seals 1 to {MAX_SECRET} bytes, not {}",
                secret.len()
            )));
        }
        let start = Instant::now();
        let mut ctx = self.context()?;
        let (primary, parent) = match self.create_primary(&mut ctx, self.primary) {
            Ok(parent) => (self.primary, parent),
            Err(e) if self.primary == Primary::EccP256 && tpm_kind(e).is_some() => {
                // The TPM refused the ECC template: use RSA, now and for the next seals.
                warn!(tcti = %self.tcti, error = %describe(e), "ECC primary refused; using RSA-2048");
                let parent = self
                    .create_primary(&mut ctx, Primary::Rsa2048)
                    .map_err(|e| self.error("creating the RSA-2048 primary storage key", e))?;
                self.primary = Primary::Rsa2048;
                (Primary::Rsa2048, parent)
            }
            Err(e) => return Err(self.error("creating the primary storage key", e)),
        };
        let blob = self.with_flushed(&mut ctx, parent, "primary key", |ctx| {
            self.seal_under(ctx, primary, parent, label, secret)
        })?;
        let bytes = cbor4ii::serde::to_vec(Vec::new(), &blob)
            .map_err(|e| KeyStoreError::Malformed(format!("encoding the blob: {e}")))?;
        debug!(
            tcti = %self.tcti,
            label,
            primary = ?blob.primary,
            bytes = bytes.len(),
            elapsed_us = start.elapsed().as_micros() as u64,
            "sealed with the TPM"
        );
        Ok(bytes)
    }

    fn unseal(&mut self, label: &str, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
        let start = Instant::now();
        let blob = decode_blob(blob)?;
        if blob.label != label {
            return Err(KeyStoreError::WrongLabel {
                expected: label.to_owned(),
                found: blob.label,
            });
        }
        let public = unmarshal_public(&blob.public)?;
        let private = unmarshal_private(&blob.private)?;
        let auth = label_auth(label).map_err(|e| self.error("deriving the authValue", e))?;

        let mut ctx = self.context()?;
        let parent = self
            .create_primary(&mut ctx, blob.primary)
            .map_err(|e| self.error("creating the primary storage key", e))?;
        let secret = self.with_flushed(&mut ctx, parent, "primary key", |ctx| {
            let name = ctx
                .tr_get_name(parent.into())
                .map_err(|e| self.error("reading the primary key's name", e))?;
            if name.value() != blob.primary_name.as_slice() {
                // Another seed made another primary: another TPM, or this one cleared.
                return Err(KeyStoreError::WrongTpm);
            }
            self.with_session(ctx, parent, |ctx, session| {
                self.set_encryption(ctx, session, false, false)?;
                let object = ctx
                    .execute_with_session(Some(session), |ctx| ctx.load(parent, private, public))
                    .map_err(|e| match tpm_kind(e) {
                        // The primary is the one that sealed, so the blob was altered.
                        Some(Tss2ResponseCodeKind::Integrity) => KeyStoreError::Tampered,
                        _ => self.error("loading the sealed object", e),
                    })?;
                self.with_flushed(ctx, object, "sealed object", |ctx| {
                    self.unseal_loaded(ctx, session, object, auth)
                })
            })
        })?;
        debug!(
            tcti = %self.tcti,
            label,
            elapsed_us = start.elapsed().as_micros() as u64,
            "unsealed with the TPM"
        );
        Ok(Zeroizing::new(secret.value().to_vec()))
    }
}

impl Primary {
    /// The fixed template. Changing it changes the primary and orphans every blob.
    fn template(self) -> tss_esapi::Result<Public> {
        // TCG "Provisioning Guidance" storage root key attributes.
        let attributes = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_sensitive_data_origin(true)
            .with_user_with_auth(true)
            .with_no_da(true)
            .with_restricted(true)
            .with_decrypt(true)
            .build()?;
        let builder = tss_esapi::structures::PublicBuilder::new()
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attributes);
        match self {
            Primary::EccP256 => builder
                .with_public_algorithm(PublicAlgorithm::Ecc)
                .with_ecc_parameters(
                    PublicEccParametersBuilder::new_restricted_decryption_key(
                        SymmetricDefinitionObject::AES_128_CFB,
                        EccCurve::NistP256,
                    )
                    .build()?,
                )
                .with_ecc_unique_identifier(EccPoint::new(
                    EccParameter::try_from(vec![0u8; 32])?,
                    EccParameter::try_from(vec![0u8; 32])?,
                ))
                .build(),
            Primary::Rsa2048 => builder
                .with_public_algorithm(PublicAlgorithm::Rsa)
                .with_rsa_parameters(
                    PublicRsaParametersBuilder::new_restricted_decryption_key(
                        SymmetricDefinitionObject::AES_128_CFB,
                        RsaKeyBits::Rsa2048,
                        RsaExponent::default(),
                    )
                    .build()?,
                )
                .with_rsa_unique_identifier(PublicKeyRsa::try_from(vec![0u8; 256])?)
                .build(),
        }
    }
}

/// The template of a sealed data object: a keyed-hash object without a scheme, usable
/// with its authValue, never duplicable.
fn sealed_template() -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .build()?;
    tss_esapi::structures::PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(Digest::default())
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
}

/// The authValue that binds a sealed object to its label.
fn label_auth(label: &str) -> tss_esapi::Result<Auth> {
    let derived = Zeroizing::new(blake3::derive_key(AUTH_CONTEXT, label.as_bytes()));
    Auth::try_from(derived.as_slice())
}

fn decode_blob(bytes: &[u8]) -> Result<SealedBlob, KeyStoreError> {
    let Versioned { version } = cbor4ii::serde::from_slice(bytes)
        .map_err(|e| KeyStoreError::Malformed(format!("not a TPM blob: {e}")))?;
    if version != BLOB_VERSION {
        return Err(KeyStoreError::Malformed(format!(
            "TPM blob version {version} is not supported (expected {BLOB_VERSION})"
        )));
    }
    let blob: SealedBlob = cbor4ii::serde::from_slice(bytes)
        .map_err(|e| KeyStoreError::Malformed(format!("not a TPM blob: {e}")))?;
    // The decoder ignores trailing bytes: accept only the encoding `seal` writes.
    let again = cbor4ii::serde::to_vec(Vec::new(), &blob)
        .map_err(|e| KeyStoreError::Malformed(format!("re-encoding the blob: {e}")))?;
    if again != bytes {
        return Err(KeyStoreError::Malformed(
            "TPM blob has trailing bytes or is not canonically encoded".to_owned(),
        ));
    }
    Ok(blob)
}

fn unmarshal_public(bytes: &[u8]) -> Result<Public, KeyStoreError> {
    let malformed = |e| KeyStoreError::Malformed(format!("sealed public area: {}", describe(e)));
    let public = PublicBuffer::unmarshall(bytes)
        .and_then(Public::try_from)
        .map_err(malformed)?;
    // Anything else would be refused by the TPM later, with a less useful error.
    if !matches!(public, Public::KeyedHash { .. }) {
        return Err(KeyStoreError::Malformed(
            "sealed public area is not a keyed-hash object".to_owned(),
        ));
    }
    // The unmarshaller ignores trailing bytes: insist on the exact encoding.
    let again = PublicBuffer::try_from(public.clone())
        .and_then(|p| p.marshall())
        .map_err(malformed)?;
    if again != bytes {
        return Err(KeyStoreError::Malformed(
            "sealed public area is not canonically encoded".to_owned(),
        ));
    }
    Ok(public)
}

/// Marshals a `TPM2B_PRIVATE`: a big-endian `u16` size, then the bytes.
fn marshal_private(private: &Private) -> Vec<u8> {
    let value = private.value();
    // A Private holds at most size_of::<_PRIVATE>() bytes, far below u16::MAX.
    let size = u16::try_from(value.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(2 + value.len());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(value);
    out
}

fn unmarshal_private(bytes: &[u8]) -> Result<Private, KeyStoreError> {
    let malformed = |what: &str| KeyStoreError::Malformed(format!("sealed private area: {what}"));
    let (size, value) = bytes
        .split_first_chunk::<2>()
        .ok_or_else(|| malformed("truncated"))?;
    if usize::from(u16::from_be_bytes(*size)) != value.len() {
        return Err(malformed("size does not match its contents"));
    }
    if value.is_empty() {
        return Err(malformed("empty"));
    }
    Private::try_from(value).map_err(|e| malformed(&describe(e)))
}

/// The TPM response code kind of `e`, if the TPM itself (not the TSS) returned it.
fn tpm_kind(e: tss_esapi::Error) -> Option<Tss2ResponseCodeKind> {
    match e {
        tss_esapi::Error::Tss2Error(rc) if layer(raw_rc(rc)) == 0 => rc.kind(),
        _ => None,
    }
}

fn raw_rc(rc: Tss2ResponseCode) -> u32 {
    match rc {
        Tss2ResponseCode::Success => 0,
        Tss2ResponseCode::FormatZero(rc) => rc.0,
        Tss2ResponseCode::FormatOne(rc) => rc.0,
    }
}

fn layer(raw: u32) -> u32 {
    raw >> 16
}

/// A readable description of a TSS error, with its raw code. Messages from the TPM
/// itself contain `(TPM_RC 0x…)`.
fn describe(e: tss_esapi::Error) -> String {
    let rc = match e {
        tss_esapi::Error::WrapperError(kind) => return format!("tss-esapi: {kind}"),
        tss_esapi::Error::Tss2Error(rc) => rc,
    };
    let raw = raw_rc(rc);
    let layer_name = match layer(raw) {
        0 => return format!("{rc} (TPM_RC {raw:#x})"),
        6 => "FAPI",
        7 => "ESAPI",
        8 => "SAPI",
        9 => "marshalling",
        10 => "TCTI",
        11 => "resource manager",
        12 => return format!("{rc} (TPM_RC {raw:#x}, via the resource manager)"),
        _ => "TSS",
    };
    format!("{layer_name}: {} ({raw:#x})", BaseRc(raw & 0xffff))
}

/// The TSS2 base response codes (`TSS2_BASE_RC_*`) shared by the non-TPM layers.
struct BaseRc(u32);

impl fmt::Display for BaseRc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            1 => "general failure",
            2 => "not implemented",
            3 => "bad context",
            4 => "ABI mismatch",
            5 => "bad reference",
            6 => "insufficient buffer",
            7 => "bad sequence",
            8 => "no connection",
            9 => "try again",
            10 => "I/O error",
            11 => "bad value",
            12 => "not permitted",
            13 => "invalid sessions",
            14 => "no decrypt parameter",
            15 => "no encrypt parameter",
            16 => "bad size",
            17 => "malformed response",
            18 => "insufficient context",
            19 => "insufficient response",
            20 => "incompatible TCTI",
            21 => "not supported",
            22 => "bad TCTI structure",
            23 => "out of memory",
            24 => "bad ESYS_TR handle",
            25 => "multiple decrypt sessions",
            26 => "multiple encrypt sessions",
            27 => "response authorization failed",
            28 => "no config",
            29 => "bad path",
            30 => "not deletable",
            31 => "path already exists",
            32 => "key not found",
            33 => "signature verification failed",
            34 => "hash mismatch",
            35 => "key not duplicable",
            36 => "path not found",
            37 => "no certificate",
            38 => "no PCR",
            39 => "PCR not resettable",
            40 => "bad template",
            41 => "authorization failed",
            42 => "authorization unknown",
            43 => "NV not readable",
            44 => "NV too small",
            45 => "NV not writeable",
            46 => "policy unknown",
            47 => "NV wrong type",
            48 => "name already exists",
            49 => "no TPM",
            50 => "bad key",
            51 => "no handle",
            52 => "not provisioned",
            53 => "already provisioned",
            _ => "unknown error",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_tcti_falls_back_to_the_device() {
        // Only meaningful when none of the variables is set in the test environment.
        if ["BT_TCTI", "TPM2TOOLS_TCTI", "TCTI"]
            .iter()
            .all(|v| std::env::var_os(v).is_none())
        {
            assert_eq!(default_tcti(), "device:/dev/tpmrm0");
        }
    }

    #[test]
    fn templates_build() {
        Primary::EccP256.template().unwrap();
        Primary::Rsa2048.template().unwrap();
        sealed_template().unwrap();
    }

    #[test]
    fn label_auth_differs_per_label() {
        let a = label_auth("node-key").unwrap();
        let b = label_auth("other").unwrap();
        assert_ne!(a.value(), b.value());
        assert_eq!(a.value().len(), 32);
    }

    #[test]
    fn private_round_trips_and_rejects_bad_sizes() {
        let private = Private::try_from(vec![7u8; 40]).unwrap();
        let bytes = marshal_private(&private);
        assert_eq!(&bytes[..2], &[0, 40]);
        assert_eq!(unmarshal_private(&bytes).unwrap(), private);
        for bad in [&[][..], &[0][..], &[0, 0][..], &bytes[..bytes.len() - 1]] {
            assert!(matches!(
                unmarshal_private(bad),
                Err(KeyStoreError::Malformed(_))
            ));
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(unmarshal_private(&long).is_err());
    }

    #[test]
    fn public_round_trips_and_rejects_garbage() {
        let public = sealed_template().unwrap();
        let bytes = PublicBuffer::try_from(public.clone())
            .unwrap()
            .marshall()
            .unwrap();
        assert_eq!(unmarshal_public(&bytes).unwrap(), public);
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(unmarshal_public(&trailing).is_err());
        for len in 0..bytes.len() {
            assert!(unmarshal_public(&bytes[..len]).is_err(), "prefix {len}");
        }
        // A storage key is not a sealed object.
        let primary = PublicBuffer::try_from(Primary::EccP256.template().unwrap())
            .unwrap()
            .marshall()
            .unwrap();
        assert!(unmarshal_public(&primary).is_err());
    }

    #[test]
    fn blob_rejects_other_versions_and_garbage() {
        let blob = SealedBlob {
            version: 2,
            label: "x".into(),
            primary: Primary::EccP256,
            primary_name: vec![],
            public: vec![],
            private: vec![],
        };
        let bytes = cbor4ii::serde::to_vec(Vec::new(), &blob).unwrap();
        let err = decode_blob(&bytes).unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
        for garbage in [&b""[..], b"\xff\xff", b"hello", &bytes[..bytes.len() / 2]] {
            assert!(matches!(
                decode_blob(garbage),
                Err(KeyStoreError::Malformed(_))
            ));
        }
    }

    #[test]
    fn describes_tcti_errors() {
        let e = tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(0xa000a));
        assert_eq!(describe(e), "TCTI: I/O error (0xa000a)");
        assert_eq!(tpm_kind(e), None);
        // TPM_RC_INTEGRITY on parameter 1 (format one).
        let e = tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(0x1df));
        assert_eq!(tpm_kind(e), Some(Tss2ResponseCodeKind::Integrity));
        assert!(describe(e).contains("(TPM_RC 0x1df)"), "{}", describe(e));
    }
}
