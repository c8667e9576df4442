//! `mnvault tenant export` and `mnvault tenant shred`: a client company's
//! offboarding.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Args;
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use mnvault_client::purpose::Purpose;

use super::{create_private, rfc3339, Connection};

/// `mnvault tenant export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The tenant exported (checked against the job's).
    #[arg(long)]
    pub tenant: String,
    /// An approved filing job of purpose tenant-export.
    #[arg(long)]
    pub job: String,
    /// The client's age X25519 public key (`age1…`, from `age-keygen`); only
    /// its private key decrypts the export.
    #[arg(long)]
    pub recipient: String,
    /// The age file to write (0600); it must not exist yet. Decrypted
    /// (`age -d -i KEY FILE`) it is one `token<TAB>number` line per token.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub connection: Connection,
}

/// `mnvault tenant shred`.
#[derive(Debug, Args)]
pub struct ShredArgs {
    /// The tenant to shred.
    #[arg(long)]
    pub tenant: String,
    /// Do not ask for confirmation (scripts).
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub connection: Connection,
}

/// Exports the job's tenant into `args.out`, writing the file as its chunks
/// arrive; a cut export leaves no file behind.
pub async fn export(args: ExportArgs, data_dir: &Path, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let client = args.connection.connect(data_dir).await?;
    let job = client.get_filing_job(&args.job).await?;
    if job.tenant != args.tenant {
        bail!(
            "filing job {} is for tenant \"{}\", not \"{}\"; nothing was exported",
            job.job_id,
            job.tenant,
            args.tenant
        );
    }
    if job.purpose != Purpose::TenantExport.id() {
        bail!(
            "filing job {} declares purpose {}; an export needs a job created with --purpose {}",
            job.job_id,
            job.purpose,
            Purpose::TenantExport.id()
        );
    }
    let mut file = create_private(&args.out)?;
    let written = async {
        let mut chunks = std::pin::pin!(client.export_tenant(&args.job, &args.recipient).await?);
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} records, eta {eta}")
                .expect("valid template"),
        );
        let mut records = 0;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            file.write_all(&chunk.chunk).with_context(|| format!("cannot write {}", args.out.display()))?;
            bar.set_length(chunk.total);
            bar.set_position(chunk.records);
            records = chunk.records;
        }
        bar.finish_and_clear();
        file.sync_all().with_context(|| format!("cannot write {}", args.out.display()))?;
        anyhow::Ok(records)
    }
    .await;
    let records = match written {
        Ok(records) => records,
        Err(error) => {
            drop(file);
            // An incomplete age file does not decrypt; do not leave one to be mistaken for the export.
            let _ = std::fs::remove_file(&args.out);
            return Err(error.context("the export was not completed and its file was removed"));
        }
    };
    writeln!(out, "exported {records} record(s) of tenant {} to {}", args.tenant, args.out.display())?;
    Ok(())
}

/// Shreds the tenant once the operator typed its name on `input` (or said
/// `--yes`).
pub async fn shred(
    args: ShredArgs,
    data_dir: &Path,
    input: &mut (dyn BufRead + Send),
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    if !args.yes {
        eprint!(
            "This destroys the keys and every number of tenant \"{}\"; it cannot be undone. Backups taken before \
             still hold its keys until the root key is rotated and the old one destroyed.\nType the tenant's name \
             to confirm: ",
            args.tenant
        );
        let _ = std::io::stderr().flush();
        let mut typed = String::new();
        input.read_line(&mut typed).context("cannot read the confirmation")?;
        if typed.trim() != args.tenant {
            bail!("the name typed is not \"{}\"; nothing was shredded", args.tenant);
        }
    }
    let client = args.connection.connect(data_dir).await?;
    let shredded = client.shred_tenant(&args.tenant).await?;
    let at = shredded.shredded_at.as_ref().and_then(mnvault_client::from_timestamp).map(rfc3339).unwrap_or_default();
    writeln!(
        out,
        "tenant {} shredded at {at}: keys destroyed, {} sealed number(s) deleted",
        shredded.tenant, shredded.records_deleted
    )?;
    Ok(())
}
