//! The `btnode` binary, run as a user runs it.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

use keys::swtpm::Swtpm;

const PASS: &str = "correct horse battery staple";

fn btnode(data_dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_btnode"));
    cmd.arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("BT_PASSPHRASE")
        .env_remove("BT_PASSPHRASE_FILE")
        .env_remove("BT_TCTI")
        .env_remove("TPM2TOOLS_TCTI")
        .env_remove("TCTI")
        .env_remove("BT_DATA_DIR")
        .stdin(Stdio::null());
    cmd
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "btnode panicked: {stderr}");
    out
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "btnode failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(!out.status.success(), "btnode succeeded unexpectedly");
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8(out.stderr).unwrap()
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap()
}

#[test]
fn init_then_id_print_the_same_identity() {
    let dir = tempfile::tempdir().unwrap();
    let init = json(&ok(btnode(
        dir.path(),
        &["init", "--key-store", "software", "--json"],
    )
    .env("BT_PASSPHRASE", PASS)));
    let principal = init["principal"].as_str().unwrap();
    let peer_id = init["peer_id"].as_str().unwrap();
    assert_eq!(principal.len(), 52);
    assert!(peer_id.starts_with("12D3KooW"), "{peer_id}");
    assert_eq!(init["key_store"], "software");
    assert_eq!(init["key_store_reason"], "chosen with --key-store software");

    let id = json(&ok(
        btnode(dir.path(), &["id", "--json"]).env("BT_PASSPHRASE", PASS)
    ));
    assert_eq!(id["principal"], principal);
    assert_eq!(id["peer_id"], peer_id);

    // The text form says the same.
    let text = ok(btnode(dir.path(), &["id"]).env("BT_PASSPHRASE", PASS));
    assert!(text.contains(&format!("principal: {principal}")), "{text}");
    assert!(text.contains(&format!("peer id:   {peer_id}")), "{text}");
    assert!(text.contains("key store: software"), "{text}");
}

#[test]
fn default_store_is_the_tpm_when_one_answers_and_says_why() {
    // No TPM device: the software store, and the reason names the missing device.
    let dir = tempfile::tempdir().unwrap();
    let init = json(&ok(btnode(dir.path(), &["init", "--json"])
        .env("TPM2TOOLS_TCTI", "device:/nonexistent/tpmrm0")
        .env("BT_PASSPHRASE", PASS)));
    assert_eq!(init["key_store"], "software");
    assert_eq!(
        init["key_store_reason"],
        "default: no TPM found (device:/nonexistent/tpmrm0 does not exist)"
    );

    // A TPM that answers: the TPM store, no passphrase needed.
    let state = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start(state.path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let init = json(&ok(
        btnode(dir.path(), &["init", "--json"]).env("BT_TCTI", tpm.tcti())
    ));
    assert_eq!(init["key_store"], format!("tpm ({})", tpm.tcti()));
    assert_eq!(
        init["key_store_reason"],
        format!("default: a TPM answered at {}", tpm.tcti())
    );
    // `id` finds the TPM through the TCTI recorded at init.
    let id = json(&ok(&mut btnode(dir.path(), &["id", "--json"])));
    assert_eq!(id["principal"], init["principal"]);
}

#[test]
fn explicit_tcti_that_does_not_answer_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = fails(
        btnode(
            dir.path(),
            &["init", "--tcti", "swtpm:host=127.0.0.1,port=1"],
        )
        .env("BT_PASSPHRASE", PASS),
    );
    assert!(err.contains("did not answer"), "{err}");
    assert!(!dir.path().join("node.cbor").exists());
}

#[test]
fn passphrase_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, format!("{PASS}\n")).unwrap();
    let data = dir.path().join("data");
    let pass = pass.to_str().unwrap();
    let a = json(&ok(&mut btnode(
        &data,
        &[
            "init",
            "--key-store",
            "software",
            "--json",
            "--passphrase-file",
            pass,
        ],
    )));
    // The trailing newline is not part of the passphrase: the env var opens it too.
    let b = json(&ok(
        btnode(&data, &["id", "--json"]).env("BT_PASSPHRASE", PASS)
    ));
    assert_eq!(a["principal"], b["principal"]);
}

#[test]
fn init_refuses_to_replace_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let first = json(&ok(btnode(
        dir.path(),
        &["init", "--key-store", "software", "--json"],
    )
    .env("BT_PASSPHRASE", PASS)));
    let err =
        fails(btnode(dir.path(), &["init", "--key-store", "software"]).env("BT_PASSPHRASE", PASS));
    assert!(
        err.contains("already holds a node identity") && err.contains("--force"),
        "{err}"
    );
    // Nothing changed.
    let id = json(&ok(
        btnode(dir.path(), &["id", "--json"]).env("BT_PASSPHRASE", PASS)
    ));
    assert_eq!(id["principal"], first["principal"]);

    let second = json(&ok(btnode(
        dir.path(),
        &["init", "--key-store", "software", "--force", "--json"],
    )
    .env("BT_PASSPHRASE", PASS)));
    assert_ne!(second["principal"], first["principal"]);
    let id = json(&ok(
        btnode(dir.path(), &["id", "--json"]).env("BT_PASSPHRASE", PASS)
    ));
    assert_eq!(id["principal"], second["principal"]);
}

/// A tree's root key is never removed or replaced by `init` without `--force`, even
/// where the node's own files are gone (someone resetting the node's identity): it
/// deleted `keys/root.key` (without `--root`) or overwrote it (with it).
#[test]
fn init_keeps_a_root_key_without_force() {
    let dir = tempfile::tempdir().unwrap();
    ok(
        btnode(dir.path(), &["init", "--key-store", "software", "--root"])
            .env("BT_PASSPHRASE", PASS),
    );
    let root_key = dir.path().join("keys/root.key");
    let before = std::fs::read(&root_key).unwrap();
    std::fs::remove_file(dir.path().join("node.cbor")).unwrap();
    std::fs::remove_file(dir.path().join("keys/node.key")).unwrap();
    for args in [
        &["init", "--key-store", "software"][..],
        &["init", "--key-store", "software", "--root"][..],
    ] {
        let err = fails(btnode(dir.path(), args).env("BT_PASSPHRASE", PASS));
        assert!(
            err.contains("root key") && err.contains("--force"),
            "{args:?}: {err}"
        );
        assert_eq!(std::fs::read(&root_key).unwrap(), before, "{args:?}");
    }
}

#[test]
fn wrong_passphrase_and_missing_passphrase_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    ok(btnode(dir.path(), &["init", "--key-store", "software"]).env("BT_PASSPHRASE", PASS));
    let err = fails(btnode(dir.path(), &["id"]).env("BT_PASSPHRASE", "not it"));
    assert!(
        err.contains("wrong passphrase") && err.contains("node.key"),
        "{err}"
    );
    let err = fails(&mut btnode(dir.path(), &["id"]));
    assert!(err.contains("needs a passphrase"), "{err}");
}

#[test]
fn corrupt_or_unreadable_key_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    ok(btnode(dir.path(), &["init", "--key-store", "software"]).env("BT_PASSPHRASE", PASS));
    let key = dir.path().join("keys/node.key");

    // Tampered: a bit flipped in the sealed secret.
    let mut bytes = std::fs::read(&key).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&key, &bytes).unwrap();
    let err = fails(btnode(dir.path(), &["id"]).env("BT_PASSPHRASE", PASS));
    assert!(
        err.contains(key.to_str().unwrap()) && err.contains("altered"),
        "{err}"
    );

    // Garbage.
    std::fs::write(&key, b"\x00\x01garbage").unwrap();
    let err = fails(btnode(dir.path(), &["id"]).env("BT_PASSPHRASE", PASS));
    assert!(
        err.contains(key.to_str().unwrap()) && err.contains("corrupt"),
        "{err}"
    );

    // Unreadable: a directory where the file should be.
    std::fs::remove_file(&key).unwrap();
    std::fs::create_dir(&key).unwrap();
    let err = fails(btnode(dir.path(), &["id"]).env("BT_PASSPHRASE", PASS));
    assert!(
        err.contains(key.to_str().unwrap()) && err.contains("cannot read"),
        "{err}"
    );

    // Missing.
    std::fs::remove_dir(&key).unwrap();
    let err = fails(btnode(dir.path(), &["id"]).env("BT_PASSPHRASE", PASS));
    assert!(err.contains(key.to_str().unwrap()), "{err}");

    // The public node file, corrupt.
    std::fs::write(dir.path().join("node.cbor"), b"junk").unwrap();
    let err = fails(btnode(dir.path(), &["id"]).env("BT_PASSPHRASE", PASS));
    assert!(
        err.contains("node.cbor") && err.contains("corrupt"),
        "{err}"
    );
}

#[test]
fn id_without_init_and_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let err = fails(&mut btnode(dir.path(), &["id"]));
    assert!(err.contains("btnode init"), "{err}");
    let out = run(&mut btnode(dir.path(), &["init", "--key-store", "floppy"]));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("unknown key store \"floppy\""), "{err}");
}

#[test]
fn plaintext_store_warns() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&mut btnode(
        dir.path(),
        &["init", "--key-store", "plaintext"],
    ));
    assert!(out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("IN CLEAR"), "{err}");
    let out = run(&mut btnode(dir.path(), &["id"]));
    assert!(out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("IN CLEAR"));
}

#[test]
fn tpm_store_survives_a_tpm_restart() {
    let state = tempfile::tempdir().unwrap();
    let mut tpm = Swtpm::start(state.path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tcti = tpm.tcti();
    let init = json(&ok(&mut btnode(
        dir.path(),
        &["init", "--key-store", "tpm", "--tcti", &tcti, "--json"],
    )));
    assert!(
        init["key_store"].as_str().unwrap().starts_with("tpm"),
        "{init}"
    );

    // No passphrase is involved (none is set), and the blob outlives a TPM restart.
    tpm.restart().unwrap();
    let tcti = tpm.tcti();
    let id = json(&ok(&mut btnode(
        dir.path(),
        &["id", "--tcti", &tcti, "--json"],
    )));
    assert_eq!(id["principal"], init["principal"]);
    assert_eq!(id["peer_id"], init["peer_id"]);

    // Another TPM cannot unseal it.
    let other_state = tempfile::tempdir().unwrap();
    let other = Swtpm::start(other_state.path()).unwrap();
    let err = fails(&mut btnode(dir.path(), &["id", "--tcti", &other.tcti()]));
    assert!(
        err.contains("not sealed by this TPM") && err.contains("node.key"),
        "{err}"
    );
}

/// `cap revoke` with no daemon answering saves the list for the next start, also where a
/// daemon that crashed left its socket behind (it tried that daemon, failed, and saved
/// nothing: a compromised principal could not be revoked while the node was down).
#[test]
fn cap_revoke_with_a_stale_socket_saves_the_list() {
    let dir = tempfile::tempdir().unwrap();
    ok(
        btnode(dir.path(), &["init", "--key-store", "software", "--root"])
            .env("BT_PASSPHRASE", PASS),
    );
    let other = tempfile::tempdir().unwrap();
    let id = json(&ok(btnode(
        other.path(),
        &["init", "--key-store", "software", "--json"],
    )
    .env("BT_PASSPHRASE", PASS)));
    let principal = id["principal"].as_str().unwrap();
    // What a killed daemon leaves: a socket no one listens on.
    drop(std::os::unix::net::UnixListener::bind(dir.path().join("control.sock")).unwrap());
    let out = ok(btnode(dir.path(), &["cap", "revoke", principal]).env("BT_PASSPHRASE", PASS));
    assert!(out.contains("not running"), "{out}");
    let lists: Vec<_> = std::fs::read_dir(dir.path().join("revocations"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".list"))
        .collect();
    assert_eq!(lists.len(), 1, "{lists:?}");
}

/// A local path that is not UTF-8 is refused with a clear error before the daemon is
/// asked (it was passed on with its odd bytes replaced, naming another file).
#[test]
fn a_local_path_that_is_not_utf8_is_refused_clearly() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt"));
    for args in [
        vec![
            std::ffi::OsStr::new("fs"),
            std::ffi::OsStr::new("get"),
            std::ffi::OsStr::new("/x/y"),
            odd.as_os_str(),
        ],
        vec![
            std::ffi::OsStr::new("mount"),
            std::ffi::OsStr::new("/x"),
            odd.as_os_str(),
        ],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_btnode"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not valid UTF-8"), "{args:?}: {err}");
    }
}
