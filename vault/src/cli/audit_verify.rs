//! `mnvault audit verify` and `mnvault audit checkpoint`: the log checked
//! with public keys only, on the live database, a copy, or an export.

use std::io::{BufRead, BufReader, Read as _, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mnvault_core::audit::checkpoint::{ChainEvidence, SignedCheckpoint, TrustedKeys};
use mnvault_core::audit::line::{AuditLine, MAX_LINE_BYTES};
use mnvault_core::vault::checkpoint::{check_external_checkpoint, verify_log, LogWalk};
use mnvault_keys::PublicKey;

use super::{load_settings, progress_bar, Connection};
use crate::startup;
use crate::store::OpenMode;

/// `mnvault audit verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Verify an export (`mnvault audit export`) instead of the database:
    /// it needs nothing but itself and the public key.
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// A checkpoint saved earlier (`mnvault audit checkpoint --out FILE`):
    /// the log must still extend it, so truncation and rewriting after it
    /// are caught. Its signer is trusted when no key is pinned.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// The vault's public signing key (`ed25519:<base64>`, or a file holding
    /// it), trusted over `[audit] public_key`.
    #[arg(long, value_name = "KEY")]
    pub public_key: Option<String>,
    /// Use no secret even if the root key is at hand: skip the chain MACs
    /// and the stored records' and jobs' tags, which need it.
    #[arg(long)]
    pub public_only: bool,
    /// With no key pinned, given, or at hand, trust the first signing key
    /// the log lists. Weak (whoever rewrote the whole log could have
    /// replaced it); without this flag such a verification fails.
    #[arg(long)]
    pub trust_log_keys: bool,
}

/// `mnvault audit checkpoint`.
#[derive(Debug, Args)]
pub struct CheckpointArgs {
    /// Where to save the signed head (one JSON line). Keep it off the
    /// server: with the office's records, on other media, or sent to a
    /// witness.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub connection: Connection,
}

/// `ed25519:<base64>`, or a file holding it.
pub(crate) fn read_public_key(text: &str) -> anyhow::Result<PublicKey> {
    if let Some(key) = PublicKey::parse(text) {
        return Ok(key);
    }
    let mut contents = String::new();
    std::fs::File::open(text)
        .context("the public key is neither `ed25519:<base64>` nor a readable file")?
        .take(4096)
        .read_to_string(&mut contents)
        .context("the public key file is not text")?;
    PublicKey::parse(&contents).context("the public key file does not hold `ed25519:<base64>`")
}

/// A checkpoint file: its one line.
pub(crate) fn read_checkpoint(path: &Path) -> anyhow::Result<SignedCheckpoint> {
    let mut text = String::new();
    std::fs::File::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .take(64 * 1024)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {} as text", path.display()))?;
    match AuditLine::parse(text.trim()) {
        Ok(AuditLine::Checkpoint(checkpoint)) => Ok(checkpoint),
        Ok(_) => bail!("{} holds an audit line, but not a checkpoint", path.display()),
        Err(error) => bail!("{} is not a checkpoint file: {error}", path.display()),
    }
}

/// The keys to trust, and what they came from: `--public-key`, else
/// `[audit] public_key`, else the signing key the root key unwraps (when at
/// hand), else the saved checkpoint's signer, else (said loudly, and only
/// with `--trust-log-keys`) the keys the log lists itself.
fn anchors(
    public_key: Option<&str>,
    pinned: Option<PublicKey>,
    unwrapped: Option<PublicKey>,
    external: Option<&SignedCheckpoint>,
) -> anyhow::Result<(Option<TrustedKeys>, String)> {
    let (key, anchored_by) = if let Some(text) = public_key {
        let key = read_public_key(text)?;
        (key, format!("the key given on the command line ({})", key.key_id()))
    } else if let Some(key) = pinned {
        (key, format!("the key pinned in [audit] public_key ({})", key.key_id()))
    } else if let Some(key) = unwrapped {
        (key, format!("the vault's signing key, unwrapped with the root key ({})", key.key_id()))
    } else if let Some(checkpoint) = external {
        (checkpoint.signer, format!("the saved checkpoint's signer ({})", checkpoint.signer.key_id()))
    } else {
        return Ok((None, UNPINNED.to_owned()));
    };
    Ok((Some(TrustedKeys::anchored([key])), anchored_by))
}

/// The walk over the log from [`anchors`], and whether it is unpinned
/// (its keys come from the log itself): refused unless `trust_log_keys`.
/// A saved checkpoint must be signed by the anchor.
pub(crate) fn anchored_walk(
    public_key: Option<&str>,
    pinned: Option<PublicKey>,
    unwrapped: Option<PublicKey>,
    external: Option<SignedCheckpoint>,
    trust_log_keys: bool,
) -> anyhow::Result<(LogWalk, bool)> {
    let (trusted, anchored_by) = anchors(public_key, pinned, unwrapped, external.as_ref())?;
    let Some(trusted) = trusted else {
        if !trust_log_keys {
            bail!(
                "no key to trust: pin the vault's public key ([audit] public_key, from `mnvault signing-key \
                 export`), pass --public-key or --checkpoint, or accept the log's own keys with --trust-log-keys"
            );
        }
        return Ok((LogWalk::unpinned(anchored_by, external), true));
    };
    if let Some(checkpoint) = &external {
        check_external_checkpoint(checkpoint, &trusted).map_err(anyhow::Error::msg)?;
    }
    Ok((LogWalk::new(trusted, anchored_by, external), false))
}

/// What `anchored_by` says when no key anchors the verification.
const UNPINNED: &str = "UNPINNED: the first signing key the log itself lists; whoever rewrote the whole \
                                   log could have replaced it. Pin the key (`mnvault signing-key export` into \
                                   [audit] public_key, or --public-key)";

/// `mnvault audit verify`.
pub async fn verify(
    args: VerifyArgs,
    data_dir: &Path,
    config: Option<&Path>,
    database_url: Option<String>,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let external = args.checkpoint.as_deref().map(read_checkpoint).transpose()?;
    if let Some(from) = &args.from {
        // An export verifies on its own; a configuration, where there is
        // one, only adds the pinned key.
        let pinned = load_settings(data_dir, config, database_url).ok().and_then(|s| s.audit.pinned_public_key());
        let (walk, _) = anchored_walk(args.public_key.as_deref(), pinned, None, external, args.trust_log_keys)?;
        return verify_export(from, walk, out);
    }
    let settings = load_settings(data_dir, config, database_url)?;
    let store = startup::open_store(&settings, OpenMode::Review).await?;
    let result = verify_database(&args, &settings, store.as_ref(), external, out).await;
    store.close().await;
    result
}

async fn verify_database(
    args: &VerifyArgs,
    settings: &crate::config::Settings,
    store: &dyn mnvault_core::store::Store,
    external: Option<SignedCheckpoint>,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    // The root key, when at hand and wanted: the signing key it unwraps
    // anchors the signatures, and the MACs and stored state are checked.
    let provider = if args.public_only {
        None
    } else {
        match startup::root_key_provider(settings) {
            Ok(provider) => Some(provider),
            Err(error) => {
                writeln!(out, "chain MACs and stored state not checked: no root key here ({error})")?;
                None
            }
        }
    };
    let unwrapped = match &provider {
        Some(provider) => {
            mnvault_core::keyring::load_signing_key(store, provider.as_ref()).await.ok().map(|key| key.public_key())
        }
        None => None,
    };
    let pinned = settings.audit.pinned_public_key();
    let (walk, _) = anchored_walk(args.public_key.as_deref(), pinned, unwrapped, external, args.trust_log_keys)?;
    let head = store.begin_read().await?.audit_head().await?;
    let bar = progress_bar(head.seq, head.seq > 10_000);
    let evidence = verify_log(store, walk, |checked| bar.set_position(checked)).await;
    bar.finish_and_clear();
    let public = print_evidence(&evidence?, "audit chain", out);
    let keyed = match &provider {
        None if args.public_only => {
            writeln!(out, "chain MACs and stored state not checked (--public-only)")?;
            Ok(())
        }
        None => Ok(()),
        Some(provider) => super::audit_verify_keyed(store, provider.as_ref(), out).await,
    };
    public?;
    keyed
}

/// Prints what a walk found; an error naming the break if there is one.
fn print_evidence(evidence: &ChainEvidence, what: &str, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    if let Some(broken) = &evidence.broken {
        writeln!(out, "{what} BROKEN at {broken}")?;
        writeln!(out, "trusted keys: {}", evidence.anchored_by)?;
        bail!("{what} broken at {broken}");
    }
    if evidence.first_seq > 1 {
        writeln!(
            out,
            "{what} intact: {} entries from #{}, head {}",
            evidence.entries,
            evidence.first_seq,
            hex::encode(evidence.head_hash)
        )?;
    } else {
        writeln!(out, "{what} intact: {} entries, head {}", evidence.entries, hex::encode(evidence.head_hash))?;
    }
    match &evidence.last_checkpoint {
        Some(last) => writeln!(
            out,
            "signed: {} checkpoint(s) verified, the last at #{} ({}) by {}; {} entries after it not yet signed",
            evidence.checkpoints_verified,
            last.seq,
            mnvault_core::clock::rfc3339(last.time_ms),
            last.signer.key_id(),
            evidence.unsigned_tail
        )?,
        None => {
            writeln!(out, "signed: no checkpoint yet; no signature vouches for these {} entries", evidence.entries)?
        }
    }
    writeln!(out, "trusted keys: {}", evidence.anchored_by)?;
    if let Some(saved) = &evidence.external_checkpoint {
        writeln!(
            out,
            "saved checkpoint #{} of {}: the log still extends it",
            saved.seq,
            mnvault_core::clock::rfc3339(saved.time_ms)
        )?;
    }
    if evidence.unchecked_legacy > 0 {
        writeln!(
            out,
            "older entries: {} written before signed checkpoints, checked by their links only (their content needs \
             the chain key)",
            evidence.unchecked_legacy
        )?;
    }
    Ok(())
}

/// Feeds an export to `walk`, line by line (each bounded).
fn verify_export(path: &Path, mut walk: LogWalk, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = if length > 16 * 1024 * 1024 { ProgressBar::new(length) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {bytes}/{total_bytes}")
            .expect("valid template"),
    );
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let mut number = 0u64;
    let (mut whole, mut left_out) = (0u64, 0u64);
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if read == 0 {
            break;
        }
        number += 1;
        bar.inc(read as u64);
        if line.len() > MAX_LINE_BYTES {
            bail!("line {number} of {} is longer than any line an export holds", path.display());
        }
        let text = std::str::from_utf8(&line).with_context(|| format!("line {number} is not UTF-8"))?;
        let text = text.trim_end_matches(['\n', '\r']);
        if text.is_empty() {
            continue;
        }
        let parsed = AuditLine::parse(text).map_err(|error| anyhow::anyhow!("line {number}: {error}"))?;
        match &parsed {
            AuditLine::Entry(_) => whole += 1,
            AuditLine::Stub { .. } | AuditLine::LegacyStub { .. } => left_out += 1,
            _ => {}
        }
        if !walk.feed(parsed) {
            break;
        }
    }
    bar.finish_and_clear();
    let evidence = walk.finish(None);
    print_evidence(&evidence, "export", out)?;
    writeln!(out, "entries whole: {whole}; left out (did not match the export's filters): {left_out}")?;
    if evidence.checkpoints_verified == 0 {
        bail!("no trusted checkpoint after its first entry vouches for the export: it proves nothing");
    }
    if evidence.unsigned_tail > 0 {
        let last = evidence.first_seq.saturating_add(evidence.entries).saturating_sub(1);
        bail!(
            "UNSIGNED: entries #{} to #{last} are covered by no signature (anyone could have written them): sign a \
             checkpoint (`mnvault audit checkpoint`), export again, and verify that",
            last.saturating_sub(evidence.unsigned_tail).saturating_add(1)
        );
    }
    Ok(())
}

/// `mnvault audit checkpoint --out FILE`.
pub async fn checkpoint(args: CheckpointArgs, data_dir: &Path, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let client = args.connection.connect(data_dir).await?;
    let line = client.sign_checkpoint().await?;
    let Ok(AuditLine::Checkpoint(checkpoint)) = AuditLine::parse(&line) else {
        bail!("the vault answered with something other than a checkpoint");
    };
    if !checkpoint.signature_valid() {
        bail!("the vault's checkpoint does not verify under the key it names");
    }
    let temporary = args.out.with_extension("partial");
    std::fs::write(&temporary, format!("{line}\n"))
        .and_then(|()| std::fs::rename(&temporary, &args.out))
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    writeln!(
        out,
        "checkpoint #{} of {} signed by {} saved to {}",
        checkpoint.seq,
        mnvault_core::clock::rfc3339(checkpoint.time_ms),
        checkpoint.signer.key_id(),
        args.out.display()
    )?;
    Ok(())
}
