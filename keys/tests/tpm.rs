//! [`TpmStore`] against real swtpm processes, one per test in its own state directory.
//!
//! These tests need the `swtpm` binary (Debian: `apt install swtpm`); without it they fail
//! rather than skip.

use keys::keystore::{KeyStore, KeyStoreError, StoreKind, TpmStore};
use keys::swtpm::Swtpm;
use tempfile::TempDir;

const LABEL: &str = "node-key";
const SECRET: [u8; 32] = *b"0123456789abcdef0123456789abcdef";

/// An swtpm and its state directory, stopped before the directory is removed.
struct Tpm {
    swtpm: Swtpm,
    _dir: TempDir,
}

impl Tpm {
    fn start() -> Tpm {
        let dir = tempfile::tempdir().expect("create a temporary state directory");
        let swtpm =
            Swtpm::start(dir.path()).expect("start swtpm (is the swtpm package installed?)");
        Tpm { swtpm, _dir: dir }
    }

    fn store(&self) -> TpmStore {
        TpmStore::open(&self.swtpm.tcti()).expect("open the swtpm")
    }
}

#[test]
fn sealed_secret_survives_a_restart() {
    let mut tpm = Tpm::start();
    let mut store = tpm.store();
    assert_eq!(store.kind(), StoreKind::Tpm);
    assert_eq!(store.tcti(), tpm.swtpm.tcti());
    let blob = store.seal(LABEL, &SECRET).unwrap();
    assert!(
        !blob.windows(SECRET.len()).any(|w| w == SECRET),
        "secret in clear"
    );

    tpm.swtpm.restart().unwrap();
    let mut store = tpm.store();
    assert_eq!(&store.unseal(LABEL, &blob).unwrap()[..], &SECRET);
    // And again with the same store: every operation opens its own context.
    assert_eq!(&store.unseal(LABEL, &blob).unwrap()[..], &SECRET);
}

#[test]
fn blob_from_another_tpm_is_refused() {
    let a = Tpm::start();
    let b = Tpm::start();
    let blob = a.store().seal(LABEL, &SECRET).unwrap();
    let err = b.store().unseal(LABEL, &blob).unwrap_err();
    assert!(matches!(err, KeyStoreError::WrongTpm), "{err:?}");
    // The first TPM still opens it.
    assert_eq!(&a.store().unseal(LABEL, &blob).unwrap()[..], &SECRET);
}

#[test]
fn wrong_label_is_refused() {
    let tpm = Tpm::start();
    let mut store = tpm.store();
    let blob = store.seal(LABEL, &SECRET).unwrap();
    match store.unseal("other-key", &blob) {
        Err(KeyStoreError::WrongLabel { expected, found }) => {
            assert_eq!(expected, "other-key");
            assert_eq!(found, LABEL);
        }
        other => panic!("expected WrongLabel, got {other:?}"),
    }
}

#[test]
fn rewritten_label_is_refused_by_the_tpm() {
    let tpm = Tpm::start();
    let mut store = tpm.store();
    let blob = store.seal(LABEL, &SECRET).unwrap();
    // Rewrite the label field in place (same length): only the TPM's authValue check,
    // bound to the original label, can catch it.
    let at = blob
        .windows(LABEL.len())
        .position(|w| w == LABEL.as_bytes())
        .expect("label in blob");
    let mut forged = blob.clone();
    forged[at..at + LABEL.len()].copy_from_slice(b"evil-key");
    // Repeatedly, to check that failing unseals flush their handles (swtpm holds only a
    // few transient objects) and do not trip the dictionary-attack lockout.
    for _ in 0..6 {
        let err = store.unseal("evil-key", &forged).unwrap_err();
        assert!(matches!(err, KeyStoreError::Tampered), "{err:?}");
    }
    assert_eq!(&store.unseal(LABEL, &blob).unwrap()[..], &SECRET);
}

#[test]
fn malformed_blobs_are_refused() {
    let tpm = Tpm::start();
    let mut store = tpm.store();
    let blob = store.seal(LABEL, &SECRET).unwrap();
    for len in (0..blob.len()).step_by(7) {
        let err = store.unseal(LABEL, &blob[..len]).unwrap_err();
        assert!(
            matches!(err, KeyStoreError::Malformed(_)),
            "prefix {len}: {err:?}"
        );
    }
    for garbage in [&b""[..], b"garbage", &[0xff; 300], &[0xa0]] {
        let err = store.unseal(LABEL, garbage).unwrap_err();
        assert!(matches!(err, KeyStoreError::Malformed(_)), "{err:?}");
    }
    let mut extended = blob.clone();
    extended.extend_from_slice(b"trailing");
    let err = store.unseal(LABEL, &extended).unwrap_err();
    assert!(matches!(err, KeyStoreError::Malformed(_)), "{err:?}");
    assert_eq!(&store.unseal(LABEL, &blob).unwrap()[..], &SECRET);
}

#[test]
fn altered_private_area_is_tampered() {
    let tpm = Tpm::start();
    let mut store = tpm.store();
    let blob = store.seal(LABEL, &SECRET).unwrap();
    // The private area is the last field: its last byte is encrypted sensitive data.
    let mut altered = blob.clone();
    *altered.last_mut().unwrap() ^= 1;
    let err = store.unseal(LABEL, &altered).unwrap_err();
    assert!(matches!(err, KeyStoreError::Tampered), "{err:?}");
    assert_eq!(&store.unseal(LABEL, &blob).unwrap()[..], &SECRET);
}

#[test]
fn secret_sizes() {
    let tpm = Tpm::start();
    let mut store = tpm.store();
    for len in [1, 64, 128] {
        let secret: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let blob = store.seal(LABEL, &secret).unwrap();
        assert_eq!(&store.unseal(LABEL, &blob).unwrap()[..], &secret[..]);
    }
    for len in [0, 129] {
        let err = store.seal(LABEL, &vec![0; len]).unwrap_err();
        assert!(matches!(err, KeyStoreError::Malformed(_)), "{len}: {err:?}");
    }
}

#[test]
fn many_operations_do_not_leak_handles() {
    let tpm = Tpm::start();
    let mut store = tpm.store();
    for i in 0..10u8 {
        let label = format!("key-{i}");
        let blob = store.seal(&label, &[i; 16]).unwrap();
        assert_eq!(&store.unseal(&label, &blob).unwrap()[..], &[i; 16]);
    }
}

#[test]
fn open_without_a_tpm_is_a_clear_error() {
    // A port where nothing listens (nor on the next one, the control port).
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let tcti = format!("swtpm:host=127.0.0.1,port={port}");
    match TpmStore::open(&tcti) {
        Err(KeyStoreError::Tpm { tcti: t, message }) => {
            assert_eq!(t, tcti);
            assert!(message.contains("cannot connect"), "{message}");
            let shown = KeyStoreError::Tpm { tcti: t, message }.to_string();
            assert!(shown.contains(&tcti), "{shown}");
        }
        other => panic!("expected a Tpm error, got {other:?}"),
    }
}

#[test]
fn invalid_tcti_is_a_clear_error() {
    for tcti in ["nonsense:foo", "swtpm:port=notaport"] {
        match TpmStore::open(tcti) {
            Err(KeyStoreError::Tpm { message, .. }) => {
                assert!(message.contains("invalid TCTI"), "{tcti}: {message}")
            }
            other => panic!("{tcti}: expected a Tpm error, got {other:?}"),
        }
    }
}

#[test]
fn stopped_tpm_is_an_error_not_a_panic() {
    let mut tpm = Tpm::start();
    let mut store = tpm.store();
    let blob = store.seal(LABEL, &SECRET).unwrap();
    tpm.swtpm.stop();
    assert!(!tpm.swtpm.is_running());
    let err = store.unseal(LABEL, &blob).unwrap_err();
    assert!(matches!(err, KeyStoreError::Tpm { .. }), "{err:?}");
    let err = store.seal(LABEL, &SECRET).unwrap_err();
    assert!(matches!(err, KeyStoreError::Tpm { .. }), "{err:?}");
}

#[test]
fn short_tcti_form_works() {
    let tpm = Tpm::start();
    let mut store = TpmStore::open(&format!("swtpm:port={}", tpm.swtpm.port())).unwrap();
    let blob = store.seal(LABEL, &SECRET).unwrap();
    assert_eq!(&store.unseal(LABEL, &blob).unwrap()[..], &SECRET);
}

#[test]
fn store_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<TpmStore>();
}
