//! Decoding of what the database holds for the keys: sealed records
//! (`TenantKeys::open`, `sealed_key_version`), wrapped keys
//! (`RootKeyProvider::unwrap`) and the root key file (`RootKeyFile::open`).
//!
//! A fixed test keyset and root key stand in for the vault's. Invariants:
//! - nothing panics on arbitrary bytes;
//! - bytes the fuzzer made never open or unwrap: nothing opens that this
//!   process did not seal (the corpus holds records sealed under *other* keys,
//!   so they reach the tag check and fail there);
//! - a record or wrapped key sealed here, then changed in any way (a byte, its
//!   length, the token, the tenant, the version, the wrap context) does not
//!   open, and unchanged it opens to what was sealed;
//! - the refusal is the documented one (`MalformedRecord` exactly when
//!   `sealed_key_version` refuses, `UnknownKeyVersion` for a version the
//!   keyset lacks, `IntegrityCheckFailed` otherwise; `UnwrapFailed` for keys);
//! - a root key file opens exactly when it is the documented format, and then
//!   holds the key its base64 line says.
#![no_main]

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use data_encoding::BASE64;
use libfuzzer_sys::arbitrary::{self, Arbitrary, Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use mnvault_keys::{
    sealed_key_version, KeyError, KeyMaterial, RootKeyFile, RootKeyProvider, TenantKeys, WrapContext, WrappedKey,
    KEY_LEN,
};

const TENANT: &str = "fuzz-tenant";
const OTHER_TENANT: &str = "fuzz-other";
/// Record-key versions of the test keyset.
const VERSIONS: [u32; 3] = [1, 2, 7];
/// `format ‖ version ‖ nonce ‖ tag`: the shortest record.
const MIN_SEALED_LEN: usize = 1 + 4 + 12 + 16;

fn keyset(tenant: &str) -> TenantKeys {
    TenantKeys::new(
        tenant,
        &KeyMaterial::from_bytes([0x11; KEY_LEN]),
        VERSIONS.iter().map(|&v| (v, KeyMaterial::from_bytes([0x40 + v as u8; KEY_LEN]))),
    )
    .expect("test keyset")
}

struct Fixture {
    keys: TenantKeys,
    /// Same key material, another tenant: its AAD and derived keys differ.
    other_tenant: TenantKeys,
    root: RootKeyFile,
    /// Where root key file candidates are written.
    scratch: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let base =
            if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        // Plain files, each removed right after use: nothing is left behind.
        let stem = format!("mnvault-fuzz-{}", std::process::id());
        let root_path = base.join(format!("{stem}-root.key"));
        let _ = std::fs::remove_file(&root_path);
        write_0600(&root_path, &root_file_text(&[0x5a; KEY_LEN]));
        let root = RootKeyFile::open(&root_path).expect("test root key");
        // The key is in memory now; leave nothing behind.
        std::fs::remove_file(&root_path).expect("remove test root key");
        Fixture {
            keys: keyset(TENANT),
            other_tenant: keyset(OTHER_TENANT),
            root,
            scratch: base.join(format!("{stem}-candidate.key")),
        }
    })
}

fn root_file_text(key: &[u8]) -> Vec<u8> {
    format!("mnvault-root-key v1\n{}\n", BASE64.encode(key)).into_bytes()
}

fn write_0600(path: &std::path::Path, bytes: &[u8]) {
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).expect("write");
    file.write_all(bytes).expect("write");
}

/// `open` on bytes nobody sealed: always refused, with the documented error.
fn open_foreign(token: &str, sealed: &[u8]) {
    let keys = &fixture().keys;
    let result = keys.open(token, sealed);
    match sealed_key_version(sealed) {
        Err(KeyError::MalformedRecord) => {
            assert!(sealed.len() < MIN_SEALED_LEN || sealed[0] != 1);
            assert!(matches!(result, Err(KeyError::MalformedRecord)));
        }
        Err(other) => panic!("sealed_key_version: unexpected {other:?}"),
        Ok(version) => {
            assert!(sealed.len() >= MIN_SEALED_LEN && sealed[0] == 1);
            assert_eq!(version.to_be_bytes(), sealed[1..5]);
            match result {
                Err(KeyError::UnknownKeyVersion(v)) => assert!(v == version && !VERSIONS.contains(&v)),
                Err(KeyError::IntegrityCheckFailed) => assert!(VERSIONS.contains(&version)),
                Ok(_) => panic!("bytes that were never sealed opened"),
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
    }
}

/// A change to apply to something sealed here.
#[derive(Arbitrary, Debug)]
enum Tamper {
    None,
    Flip { at: usize, mask: u8 },
    Truncate { keep: usize },
    Append { bytes: Vec<u8> },
    OtherToken { token: String },
    OtherTenant,
    Relabel { version: u32 },
}

#[derive(Arbitrary, Debug)]
struct SealCase {
    token: String,
    plaintext: Vec<u8>,
    version_choice: u8,
    tamper: Tamper,
}

fn seal_and_tamper(case: SealCase) {
    let f = fixture();
    let version = VERSIONS[usize::from(case.version_choice) % VERSIONS.len()];
    let sealed = f.keys.seal_with_version(version, &case.token, &case.plaintext).expect("seal");
    assert_eq!(sealed.len(), MIN_SEALED_LEN + case.plaintext.len());
    assert_eq!(sealed_key_version(&sealed).unwrap(), version);
    if case.plaintext.len() >= 8 {
        assert!(!sealed.windows(case.plaintext.len()).any(|w| w == &case.plaintext[..]), "plaintext in clear");
    }

    let mut bytes = sealed.clone();
    let mut token = case.token.clone();
    let mut keys = &f.keys;
    match case.tamper {
        Tamper::None => {}
        Tamper::Flip { at, mask } => bytes[at % sealed.len()] ^= mask,
        Tamper::Truncate { keep } => bytes.truncate(keep % sealed.len()),
        Tamper::Append { bytes: extra } => bytes.extend_from_slice(&extra),
        Tamper::OtherToken { token: other } => token = other,
        Tamper::OtherTenant => keys = &f.other_tenant,
        Tamper::Relabel { version: other } => bytes[1..5].copy_from_slice(&other.to_be_bytes()),
    }
    let unchanged = bytes == sealed && token == case.token && std::ptr::eq(keys, &f.keys);
    match keys.open(&token, &bytes) {
        Ok(plaintext) => {
            assert!(unchanged, "a changed record opened");
            assert_eq!(&plaintext[..], &case.plaintext[..]);
        }
        Err(error) => {
            assert!(!unchanged, "an unchanged record did not open: {error}");
            let message = error.to_string();
            if case.plaintext.len() >= 4 {
                assert!(!message.as_bytes().windows(case.plaintext.len()).any(|w| w == &case.plaintext[..]));
            }
        }
    }
}

/// The wrap contexts a fuzz case may name.
fn context(choice: u8, tenant: &str, version: u32) -> WrapContext<'_> {
    match choice % 3 {
        0 => WrapContext::TenantIndexKey { tenant },
        1 => WrapContext::TenantRecordKey { tenant, version },
        _ => WrapContext::AuditChainKey,
    }
}

#[derive(Arbitrary, Debug)]
struct WrapCase {
    key: [u8; KEY_LEN],
    context: u8,
    tenant: String,
    version: u32,
    /// Where to unwrap: the same context unless these differ.
    other_context: u8,
    other_tenant: String,
    other_version: u32,
    flip: Option<(usize, u8)>,
    truncate: Option<usize>,
}

fn wrap_and_tamper(case: WrapCase) {
    let root = &fixture().root;
    let ctx = context(case.context, &case.tenant, case.version);
    let key = KeyMaterial::from_bytes(case.key);
    let wrapped = root.wrap(&key, &ctx).expect("wrap");
    let mut bytes = wrapped.as_bytes().to_vec();
    if let Some((at, mask)) = case.flip {
        let len = bytes.len();
        bytes[at % len] ^= mask;
    }
    if let Some(keep) = case.truncate {
        bytes.truncate(keep % (bytes.len() + 1));
    }
    let other = context(case.other_context, &case.other_tenant, case.other_version);
    let unchanged = bytes == wrapped.as_bytes() && ctx.associated_data() == other.associated_data();
    match root.unwrap(&WrappedKey::from_bytes(bytes), &other) {
        Ok(unwrapped) => {
            assert!(unchanged, "a changed wrapped key unwrapped");
            assert_eq!(unwrapped.expose_secret(), key.expose_secret());
        }
        Err(error) => {
            assert!(!unchanged, "an unchanged wrapped key did not unwrap");
            assert!(matches!(error, KeyError::UnwrapFailed), "{error:?}");
        }
    }
    // Distinct contexts must have distinct AADs, or a key could be moved between slots.
    if ctx != other {
        assert_ne!(ctx.associated_data(), other.associated_data(), "two slots share an AAD");
    }
}

fn unwrap_foreign(choice: u8, tenant: &str, version: u32, bytes: &[u8]) {
    let ctx = context(choice, tenant, version);
    let result = fixture().root.unwrap(&WrappedKey::from_bytes(bytes.to_vec()), &ctx);
    assert!(matches!(result, Err(KeyError::UnwrapFailed)), "bytes that were never wrapped unwrapped");
}

/// The documented root key file format, checked independently of the parser.
fn documented_key(contents: &[u8]) -> Option<Vec<u8>> {
    let rest = contents.strip_prefix(b"mnvault-root-key v1\n")?;
    let line = rest.strip_suffix(b"\n").unwrap_or(rest);
    if line.len() != 44 {
        return None;
    }
    BASE64.decode(line).ok().filter(|key| key.len() == KEY_LEN)
}

fn root_key_file(contents: &[u8]) {
    let f = fixture();
    write_0600(&f.scratch, contents);
    let opened = RootKeyFile::open(&f.scratch);
    std::fs::remove_file(&f.scratch).expect("remove candidate");
    match (documented_key(contents), opened) {
        (None, Err(KeyError::KeyFileMalformed { .. })) => {}
        (None, Ok(_)) => panic!("a root key file not in the documented format opened"),
        (Some(_), Err(error)) => panic!("a documented root key file was refused: {error}"),
        (Some(key), Ok(root)) => {
            // It holds the key its base64 line says: a wrap under it unwraps
            // under the canonical file of those bytes.
            let canonical = f.scratch.with_extension("canonical");
            let _ = std::fs::remove_file(&canonical);
            write_0600(&canonical, &root_file_text(&key));
            let reference = RootKeyFile::open(&canonical).expect("canonical file");
            std::fs::remove_file(&canonical).expect("remove canonical");
            let material = KeyMaterial::from_bytes([3; KEY_LEN]);
            let wrapped = root.wrap(&material, &WrapContext::AuditChainKey).unwrap();
            let back = reference.unwrap(&wrapped, &WrapContext::AuditChainKey).expect("same key");
            assert_eq!(back.expose_secret(), material.expose_secret());
        }
        (None, Err(other)) => panic!("unexpected error for a malformed file: {other:?}"),
    }
}

fn run(data: &[u8]) -> ArbResult<()> {
    let Some((&mode, rest)) = data.split_first() else { return Ok(()) };
    let mut u = Unstructured::new(rest);
    match mode % 5 {
        0 => {
            let token = <&str>::arbitrary(&mut u)?;
            open_foreign(token, u.take_rest());
        }
        1 => seal_and_tamper(SealCase::arbitrary(&mut u)?),
        2 => {
            let (choice, tenant, version) = <(u8, &str, u32)>::arbitrary(&mut u)?;
            unwrap_foreign(choice, tenant, version, u.take_rest());
        }
        3 => wrap_and_tamper(WrapCase::arbitrary(&mut u)?),
        _ => root_key_file(rest),
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
