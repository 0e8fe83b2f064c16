//! `btnode fs …` on the command line: asks the daemon, shows progress and results.

use std::path::{Path as FsPath, PathBuf};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use crate::FsCommand;
use crate::control::{self, Request};
use crate::files::FsRequest;

fn absolute(local: &FsPath) -> anyhow::Result<PathBuf> {
    std::path::absolute(local).with_context(|| format!("cannot resolve {}", local.display()))
}

pub(crate) fn run(data_dir: &FsPath, command: FsCommand) -> anyhow::Result<()> {
    let (request, json) = match command {
        FsCommand::Put { local, path, json } => {
            // The daemon reads the file itself (direct I/O where it can): a stream it
            // cannot open would be copied through this process.
            anyhow::ensure!(
                local.as_os_str() != "-",
                "`-` (standard input) is not supported: give a local file to put"
            );
            let local = absolute(&local)?;
            anyhow::ensure!(
                local.is_file(),
                "{} is not a readable file",
                local.display()
            );
            let request = FsRequest::Put {
                local: utf8(&local)?,
                path,
            };
            return transfer(data_dir, request, json);
        }
        FsCommand::Get { path, local, json } => {
            anyhow::ensure!(
                local.as_os_str() != "-",
                "`-` (standard output) is not supported: give a local file to write"
            );
            let local = absolute(&local)?;
            let request = FsRequest::Get {
                path,
                local: utf8(&local)?,
            };
            return transfer(data_dir, request, json);
        }
        FsCommand::Ls(a) => (FsRequest::Ls { path: a.path }, a.json),
        FsCommand::Stat(a) => (FsRequest::Stat { path: a.path }, a.json),
        FsCommand::Rm(a) => (FsRequest::Rm { path: a.path }, a.json),
        FsCommand::Mkdir {
            path,
            parents,
            json,
        } => (FsRequest::Mkdir { path, parents }, json),
        FsCommand::Mv { from, to, json } => (FsRequest::Mv { from, to }, json),
        FsCommand::Share {
            path,
            principal,
            write,
            expires,
            json,
        } => (
            FsRequest::Share {
                path,
                principal,
                write,
                expires_secs: expires,
            },
            json,
        ),
        FsCommand::Revoke {
            path,
            principal,
            json,
        } => (FsRequest::Revoke { path, principal }, json),
    };
    let ls = matches!(request, FsRequest::Ls { .. });
    let revoke = matches!(request, FsRequest::Revoke { .. });
    let result = crate::call(data_dir, &Request::Fs(request))?;
    if json {
        return crate::print_json(&result);
    }
    if ls {
        let entries: Vec<fs::DirEntry> = serde_json::from_value(result)?;
        for e in entries {
            let kind = match e.kind {
                fs::inode::Kind::Dir => "d",
                fs::inode::Kind::File => "-",
                fs::inode::Kind::Symlink => "l",
            };
            let conflict = if e.conflict.is_some() {
                "  (conflict copy)"
            } else {
                ""
            };
            println!("{kind} {:>12}  {}{conflict}", e.size, e.name);
        }
        return Ok(());
    }
    match serde_json::from_value::<fs::Stat>(result.clone()) {
        Ok(stat) => print_stat(&stat),
        Err(_) => crate::print_json(&result)?,
    }
    if revoke && let Some(revoked) = result.get("revoked") {
        print_revoked(revoked);
    }
    Ok(())
}

fn print_revoked(revoked: &serde_json::Value) {
    let count = |key: &str| revoked.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
    if let Some(sequence) = revoked.get("revocation_list").and_then(|v| v.as_u64()) {
        println!(
            "revoked {} writecap(s): in this node's revocation list (sequence {sequence}), \
             published to the overlay; {} version(s) the writer made were signed again by \
             this node",
            count("writecaps"),
            count("resigned_versions")
        );
    }
    for failed in revoked
        .get("not_resigned")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
    {
        println!(
            "not signed again (what the writer last wrote there is no longer shown): {failed}"
        );
    }
    for issuer in revoked
        .get("granted_by_others")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
    {
        println!(
            "a writecap granted by {issuer} was taken out of the shared directory but is \
             still valid: only that node (or one above it) can revoke it"
        );
    }
}

fn print_stat(stat: &fs::Stat) {
    let kind = match stat.kind {
        fs::inode::Kind::Dir => "directory",
        fs::inode::Kind::File => "file",
        fs::inode::Kind::Symlink => "symbolic link",
    };
    println!(
        "{kind}, {} bytes in {} chunks, mode {:o}",
        stat.size, stat.chunks, stat.mode
    );
    println!("inode {}", stat.inode);
    println!(
        "version {} (seq {}), written by {}",
        stat.version, stat.seq, stat.writer
    );
    if stat.anchor {
        let readers: Vec<String> = stat.readers.iter().map(ToString::to_string).collect();
        println!("shared root; readers: {}", readers.join(", "));
    }
    if stat.conflicts > 0 {
        println!(
            "{} conflicting version(s) shown as .conflict-* copies",
            stat.conflicts
        );
    }
}

/// `put` / `get`: a progress bar on a terminal, then the result.
fn transfer(data_dir: &FsPath, request: FsRequest, json: bool) -> anyhow::Result<()> {
    let bar = if json {
        ProgressBar::hidden()
    } else {
        // Hidden by indicatif itself when stderr is not a terminal.
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut outcome: Option<anyhow::Result<serde_json::Value>> = None;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(control::call_streaming(
            data_dir,
            &Request::Fs(request),
            |event| {
                if let Some(total) = event.get("total").and_then(serde_json::Value::as_u64) {
                    bar.set_length(total);
                } else if let Some(n) = event.get("progress").and_then(serde_json::Value::as_u64) {
                    bar.set_position(n);
                } else if let Some(done) = event.get("done") {
                    outcome = Some(Ok(done.clone()));
                } else if let Some(error) = event.get("error").and_then(serde_json::Value::as_str) {
                    outcome = Some(Err(anyhow::anyhow!("{error}")));
                }
                Ok(())
            },
        ))?;
    bar.finish_and_clear();
    let result = outcome.context("the daemon stopped before the transfer finished")??;
    if json {
        return crate::print_json(&result);
    }
    match serde_json::from_value::<fs::Stat>(result.clone()) {
        Ok(stat) => print_stat(&stat),
        Err(_) => {
            let bytes = result
                .get("bytes")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            let local = result
                .get("local")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("");
            println!("{bytes} bytes written to {local}");
        }
    }
    Ok(())
}

/// `path` as the daemon is told it: a path that is not UTF-8 is refused with a clear
/// error (it was passed on with its odd bytes replaced, naming another file).
fn utf8(path: &FsPath) -> anyhow::Result<String> {
    path.to_str().map(str::to_owned).ok_or_else(|| {
        anyhow::anyhow!(
            "{} is not valid UTF-8; give a path the daemon can be told as text",
            path.display()
        )
    })
}

pub(crate) fn mount(
    data_dir: &FsPath,
    path: String,
    mountpoint: &FsPath,
    json: bool,
) -> anyhow::Result<()> {
    let mountpoint = absolute(mountpoint)?;
    let request = FsRequest::Mount {
        path,
        mountpoint: utf8(&mountpoint)?,
    };
    let result = crate::call(data_dir, &Request::Fs(request))?;
    if json {
        return crate::print_json(&result);
    }
    let ro = if result["read_only"] == true {
        " (read-only: no writecap here)"
    } else {
        ""
    };
    println!(
        "{} mounted at {}{ro}",
        result["path"].as_str().unwrap_or(""),
        mountpoint.display()
    );
    Ok(())
}

pub(crate) fn umount(data_dir: &FsPath, mountpoint: &FsPath, json: bool) -> anyhow::Result<()> {
    let mountpoint = absolute(mountpoint)?;
    let request = FsRequest::Umount {
        mountpoint: utf8(&mountpoint)?,
    };
    let result = crate::call(data_dir, &Request::Fs(request))?;
    if json {
        return crate::print_json(&result);
    }
    println!("unmounted {}", mountpoint.display());
    for unwritten in result["unwritten"].as_array().into_iter().flatten() {
        eprintln!(
            "not written yet (tried again while the node runs): {}: {}",
            unwritten["path"].as_str().unwrap_or(""),
            unwritten["error"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
