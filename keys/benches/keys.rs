//! Throughput of the credential operations, with raw ed25519-dalek beside them.
//!
//! `cargo bench -p keys --bench keys` prints a markdown table. Every row also shows its
//! cost relative to one raw `ed25519-dalek` `verify_strict` measured in the same run;
//! for the 3-link chain that ratio is the price of a chain over a bare signature check.
//! The TPM rows run against a real `swtpm` that the benchmark starts on loopback.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use keys::keystore::{Argon2Params, KeyStore, Passphrase, SoftwareStore, TpmStore};
use keys::swtpm::Swtpm;
use keys::{
    Chain, DataKey, Identity, Path, Readcap, Revocations, SigningKey, Validity, VerifiedChains, now,
};

/// Runs `f` repeatedly for about `budget` and returns seconds per call.
fn measure(budget: Duration, mut f: impl FnMut()) -> f64 {
    // Warm up and size a batch of roughly 10 ms.
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < Duration::from_millis(10) {
        f();
        calls += 1;
    }
    let batch = calls.max(1);
    let start = Instant::now();
    let mut total = 0u64;
    while start.elapsed() < budget {
        for _ in 0..batch {
            f();
        }
        total += batch;
    }
    start.elapsed().as_secs_f64() / total as f64
}

struct Row {
    name: &'static str,
    seconds: f64,
}

fn main() {
    let budget = Duration::from_millis(
        std::env::var("BENCH_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000),
    );
    let mut rows = Vec::new();
    let message = [7u8; 64];

    // Raw ed25519-dalek: the baseline.
    let raw_key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
    let raw_public = raw_key.verifying_key();
    let raw_sig = ed25519_dalek::Signer::sign(&raw_key, &message);
    let raw_verify = measure(budget, || {
        black_box(raw_public.verify_strict(black_box(&message), black_box(&raw_sig))).unwrap();
    });
    rows.push(Row {
        name: "raw ed25519-dalek verify_strict (baseline)",
        seconds: raw_verify,
    });
    rows.push(Row {
        name: "raw ed25519-dalek sign",
        seconds: measure(budget, || {
            black_box(ed25519_dalek::Signer::sign(&raw_key, black_box(&message)));
        }),
    });

    // Ours: domain-separated sign and verify.
    let key = SigningKey::from_bytes(&[1; 32]);
    let public = key.public_key();
    let sig = key.sign("bench", &message);
    rows.push(Row {
        name: "keys ed25519 sign",
        seconds: measure(budget, || {
            black_box(key.sign("bench", black_box(&message)));
        }),
    });
    rows.push(Row {
        name: "keys ed25519 verify",
        seconds: measure(budget, || {
            public.verify("bench", black_box(&message), &sig).unwrap();
        }),
    });

    // A 3-link writecap chain: root → org → team → node.
    let root = SigningKey::generate();
    let org = SigningKey::generate();
    let team = SigningKey::generate();
    let node = SigningKey::generate();
    let t = now();
    let tree = Path::root_of(root.principal());
    let a = tree.join("org").unwrap();
    let b = a.join("team").unwrap();
    let c = b.join("node").unwrap();
    let v = Validity::for_seconds(3600);
    let chain = Chain::root_grant(&root, org.principal(), a, v)
        .delegate(&org, team.principal(), b, v, t)
        .unwrap()
        .delegate(&team, node.principal(), c.clone(), v, t)
        .unwrap();
    let target = c.join("service").unwrap();
    let revocations = Revocations::default();
    let chain_verify = measure(budget, || {
        chain
            .verify(black_box(&target), &node.principal(), t, &revocations)
            .unwrap();
    });
    rows.push(Row {
        name: "3-link writecap chain verify",
        seconds: chain_verify,
    });
    let mut verified = VerifiedChains::default();
    verified
        .insert(&node.principal(), &chain, t, &revocations)
        .unwrap();
    rows.push(Row {
        name: "same chain, cached (VerifiedChains::authorizes)",
        seconds: measure(budget, || {
            assert!(verified.authorizes(&node.principal(), black_box(&target), t));
        }),
    });

    // HPKE readcaps.
    let alice = Identity::generate();
    let alice_public = alice.public();
    let data_key = DataKey::generate();
    let readcap = Readcap::seal(&data_key, &alice_public, b"inode").unwrap();
    rows.push(Row {
        name: "HPKE readcap seal (incl. identity check)",
        seconds: measure(budget, || {
            black_box(Readcap::seal(&data_key, &alice_public, b"inode").unwrap());
        }),
    });
    rows.push(Row {
        name: "HPKE readcap open",
        seconds: measure(budget, || {
            black_box(readcap.open(&alice, b"inode").unwrap());
        }),
    });

    // Software key store (Argon2id with the default parameters).
    let mut software =
        SoftwareStore::new(Passphrase::new("bench passphrase")).with_params(Argon2Params::DEFAULT);
    let blob = software.seal("node-key", &[9; 64]).unwrap();
    rows.push(Row {
        name: "software store unseal (Argon2id 64 MiB, t=3)",
        seconds: measure(budget, || {
            black_box(software.unseal("node-key", &blob).unwrap());
        }),
    });

    // TPM seal/unseal against a real swtpm.
    let state = tempfile::tempdir().unwrap();
    match Swtpm::start(state.path()) {
        Ok(tpm) => {
            let mut store = TpmStore::open(&tpm.tcti()).unwrap();
            let blob = store.seal("node-key", &[9; 64]).unwrap();
            rows.push(Row {
                name: "TPM seal (swtpm)",
                seconds: measure(budget, || {
                    black_box(store.seal("node-key", &[9; 64]).unwrap());
                }),
            });
            rows.push(Row {
                name: "TPM unseal (swtpm)",
                seconds: measure(budget, || {
                    black_box(store.unseal("node-key", &blob).unwrap());
                }),
            });
        }
        Err(e) => {
            eprintln!("cannot start swtpm for the TPM rows: {e}");
            std::process::exit(1);
        }
    }

    println!("| operation | ops/s | µs/op | × raw verify |");
    println!("|---|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {:.0} | {:.1} | {:.2} |",
            row.name,
            1.0 / row.seconds,
            row.seconds * 1e6,
            row.seconds / raw_verify
        );
    }
    println!();
    println!(
        "3-link chain verify / raw verify = {:.2} (three signatures, plus re-encoding what each signs)",
        chain_verify / raw_verify
    );
}
