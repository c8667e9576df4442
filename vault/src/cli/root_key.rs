//! `mnvault root-key`: create the configured root key, rotate the stored
//! keys onto it, and say which root key opens how many stored keys. They
//! work on the database and the root keys of the configuration, while the
//! vault serves or not, on SQLite and PostgreSQL alike.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::bail;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use mnvault_core::authz::Policy;
use mnvault_core::id::Principal;
use mnvault_core::vault::{count_wrapped_keys, root_key_census, RootRotation};
use mnvault_core::VaultCore;

use crate::root_key::ROTATION_PRINCIPAL;
use crate::startup;
use crate::store::OpenMode;

/// Root key commands.
#[derive(Debug, Subcommand)]
pub enum RootKeyCommand {
    /// Create the root key `[root_key]` names: a key file, a
    /// passphrase-sealed key file, or a non-extractable key in the HSM.
    /// Never replaces an existing one.
    Init,
    /// Re-wrap under `[root_key]` every stored key that it does not open yet
    /// (one a `[[root_key.previous]]` opens), a page per transaction; run it
    /// again to finish an interrupted run. Records are not touched.
    Rotate {
        /// Re-wrap at most this many keys in this run.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
    },
    /// How many stored keys each configured root key opens: a previous root
    /// key that opens none can be removed from the configuration.
    Status,
}

/// Runs a `root-key` command.
pub async fn run(
    command: RootKeyCommand,
    data_dir: &Path,
    config: Option<&Path>,
    database_url: Option<String>,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let settings = super::load_settings(data_dir, config, database_url)?;
    match command {
        RootKeyCommand::Init => {
            let created = crate::root_key::create(&settings)?;
            writeln!(out, "created the root key: {}", created.describe())?;
            Ok(())
        }
        RootKeyCommand::Rotate { limit } => {
            let ring = crate::root_key::open_ring(&settings)?;
            let store = startup::open_store(&settings, OpenMode::Serve).await?;
            let rotated = async {
                let total = count_wrapped_keys(store.as_ref()).await?;
                let core = VaultCore::open(store.clone(), Arc::new(ring.clone()), Policy::none()).await?;
                let by = Principal::parse(ROTATION_PRINCIPAL).expect("a valid principal");
                let bar = bar(total, "stored keys looked at");
                let done = core.rotate_root_key(&ring, &by, limit, |done| bar.set_position(done.seen)).await;
                bar.finish_and_clear();
                anyhow::Ok(done?)
            }
            .await;
            store.close().await;
            let done = rotated?;
            report_rotation(&done, &ring.primary().describe(), out)?;
            if done.unopened > 0 {
                bail!(
                    "{} stored key(s) open with no configured root key; they were left as they are (is a previous \
                     root key missing from the configuration?)",
                    done.unopened
                );
            }
            Ok(())
        }
        RootKeyCommand::Status => {
            let ring = crate::root_key::open_ring(&settings)?;
            let store = startup::open_store(&settings, OpenMode::Review).await?;
            let census = async {
                let total = count_wrapped_keys(store.as_ref()).await?;
                let bar = bar(total, "stored keys opened");
                let census = root_key_census(store.as_ref(), &ring, |counted| bar.set_position(counted)).await;
                bar.finish_and_clear();
                anyhow::Ok(census?)
            }
            .await;
            store.close().await;
            let census = census?;
            for (i, (member, opened)) in ring.members().iter().zip(&census.opened_by).enumerate() {
                let role = if i == 0 { "primary" } else { "previous" };
                writeln!(out, "{role}\t{opened}\t{}", member.describe())?;
            }
            writeln!(out, "none\t{}\tstored keys no configured root key opens", census.unopened)?;
            let previous: u64 = census.opened_by[1..].iter().sum();
            if previous > 0 {
                writeln!(
                    out,
                    "{previous} stored key(s) still need a previous root key: run `mnvault root-key rotate`"
                )?;
            } else if ring.members().len() > 1 {
                writeln!(
                    out,
                    "no stored key needs a previous root key: remove [[root_key.previous]] from the configuration of \
                     every vault, restart them, then destroy the old key (keep it while backups taken before the \
                     rotation are kept)"
                )?;
            }
            if census.unopened > 0 {
                bail!("{} stored key(s) open with no configured root key", census.unopened);
            }
            Ok(())
        }
    }
}

fn report_rotation(done: &RootRotation, primary: &str, out: &mut (dyn Write + Send)) -> std::io::Result<()> {
    writeln!(out, "re-wrapped {} stored key(s) under {primary}", done.rewrapped)?;
    writeln!(out, "already under it: {}", done.already)?;
    if done.changed > 0 {
        writeln!(out, "changed meanwhile by another writer, left for the next run: {}", done.changed)?;
    }
    if done.stopped {
        writeln!(out, "stopped at --limit; run `mnvault root-key rotate` again to go on")?;
    } else if done.changed == 0 && done.unopened == 0 {
        writeln!(out, "every stored key is under the primary root key; check with `mnvault root-key status`")?;
    }
    Ok(())
}

fn bar(length: u64, what: &str) -> ProgressBar {
    // Small stores finish before a bar is worth drawing.
    if length < 1_000 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(length);
    let template = format!("{{spinner}} [{{elapsed_precise}}] {{bar:40}} {{pos}}/{{len}} {what} eta {{eta}}");
    bar.set_style(ProgressStyle::with_template(&template).expect("valid template"));
    bar
}
