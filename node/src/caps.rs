//! Writecaps this node holds, in `<data-dir>/caps/`, one wire-encoded chain per file.

use std::path::{Path as FsPath, PathBuf};

use anyhow::{Context, bail};
use keys::{Chain, Path, Principal, Revocations, Timestamp};
use protocols::wire;

const DIR: &str = "caps";

/// Checks `chain` (it must grant `holder` its own prefix now) and stores it.
pub(crate) fn install(
    data_dir: &FsPath,
    chain: &Chain,
    holder: &Principal,
) -> anyhow::Result<PathBuf> {
    let prefix = chain.prefix().context("the writecap chain is empty")?;
    chain
        .verify(prefix, holder, keys::now(), &Revocations::default())
        .with_context(|| {
            format!("the writecap for {prefix} does not hold for this node ({holder})")
        })?;
    let bytes = wire::encode(chain)?;
    let dir = data_dir.join(DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = blake3::hash(&bytes).to_hex();
    let file = dir.join(format!("{}.cap", &name[..16]));
    crate::atomic::write(&file, &bytes)
        .with_context(|| format!("cannot write {}", file.display()))?;
    Ok(file)
}

/// Reads a chain from a file, with a clear error naming it.
pub(crate) fn read(file: &FsPath) -> anyhow::Result<Chain> {
    let len = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    if len > keys::limits::MAX_CHAIN_BYTES as u64 {
        bail!(
            "{} is not a writecap: {len} bytes is too large",
            file.display()
        );
    }
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    wire::decode(&bytes).with_context(|| format!("{} is not a writecap chain", file.display()))
}

/// Writes a chain to a file.
pub(crate) fn write(file: &FsPath, chain: &Chain) -> anyhow::Result<()> {
    let bytes = wire::encode(chain)?;
    std::fs::write(file, bytes).with_context(|| format!("cannot write {}", file.display()))
}

/// Every installed chain that still verifies for `holder` at `now`.
pub(crate) fn installed(data_dir: &FsPath, holder: &Principal, now: Timestamp) -> Vec<Chain> {
    let dir = data_dir.join(DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut chains = Vec::new();
    for entry in entries.flatten() {
        let file = entry.path();
        if file.extension().is_none_or(|e| e != "cap") {
            continue;
        }
        match read(&file) {
            Ok(chain) => {
                let ok = chain.prefix().is_some_and(|prefix| {
                    chain
                        .verify(prefix, holder, now, &Revocations::default())
                        .is_ok()
                });
                if ok {
                    chains.push(chain);
                } else {
                    tracing::warn!(file = %file.display(), "installed writecap no longer holds");
                }
            }
            Err(error) => {
                tracing::warn!(file = %file.display(), error = %format!("{error:#}"), "unreadable writecap")
            }
        }
    }
    chains
}

/// The installed chain that covers `path` with the longest prefix.
pub(crate) fn covering(data_dir: &FsPath, path: &Path, holder: &Principal) -> Option<Chain> {
    installed(data_dir, holder, keys::now())
        .into_iter()
        .filter(|chain| {
            chain
                .prefix()
                .is_some_and(|prefix| path.starts_with(prefix))
        })
        .max_by_key(|chain| chain.prefix().map_or(0, |p| p.segments().len()))
}

/// Parses a duration such as `90s`, `30m`, `12h`, `7d` or `1y`.
pub(crate) fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 30m, 12h, 7d or 1y"))?;
    let unit = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "y" => 365 * 86_400,
        other => {
            return Err(format!(
                "unknown duration unit {other:?}: use s, m, h, d or y"
            ));
        }
    };
    if number == 0 {
        return Err(format!(
            "{text:?}: a writecap that expires at once grants nothing; give a length such as 90s"
        ));
    }
    number
        .checked_mul(unit)
        .filter(|secs| *secs <= MAX_DURATION_SECS)
        .ok_or_else(|| format!("{text:?} is longer than 100 years"))
}

/// `secs` as people say it: the largest whole unit of [`parse_duration`]'s.
pub(crate) fn describe_secs(secs: u64) -> String {
    let (unit, name) = [
        (365 * 86_400, "year"),
        (86_400, "day"),
        (3600, "hour"),
        (60, "minute"),
    ]
    .into_iter()
    .find(|(unit, _)| secs >= *unit)
    .unwrap_or((1, "second"));
    let n = secs / unit;
    format!("{n} {name}{}", if n == 1 { "" } else { "s" })
}

/// The longest writecap a command grants: 100 years (it granted one of 274 million years,
/// its expiry printed as a 16-digit number).
const MAX_DURATION_SECS: u64 = 100 * 365 * 86_400;

#[cfg(test)]
mod tests {
    use super::{describe_secs, parse_duration};

    #[test]
    fn durations_parse_and_nonsense_is_refused() {
        for (text, secs) in [
            ("90", 90),
            ("90s", 90),
            ("30m", 1800),
            ("12h", 43_200),
            ("7d", 604_800),
            ("1y", 31_536_000),
            ("100y", 3_153_600_000),
        ] {
            assert_eq!(parse_duration(text), Ok(secs), "{text}");
        }
        for text in [
            "",
            "s",
            "0",
            "0s",
            "0d",
            "101y",
            "99999999999d",
            "1w",
            "-1s",
            "1.5h",
            "99999999999999999999y",
        ] {
            assert!(parse_duration(text).is_err(), "{text:?} was taken");
        }
        assert_eq!(describe_secs(30 * 86_400), "30 days");
        assert_eq!(describe_secs(3600), "1 hour");
        assert_eq!(describe_secs(59), "59 seconds");
        assert_eq!(describe_secs(2 * 365 * 86_400 + 5), "2 years");
    }
}
