//! The root key inside an HSM, over PKCS#11 (SoftHSM2, a network HSM, a
//! cloud HSM through its PKCS#11 library).
//!
//! The root key is an AES-256 secret key object on the token (`CKA_TOKEN`,
//! `CKA_PRIVATE` and `CKA_SENSITIVE` true, `CKA_EXTRACTABLE` false, usable
//! only to encrypt and decrypt), found by its label. Its bytes never leave
//! the device: wrapping a stored key is a `CKM_AES_GCM` encryption inside the
//! HSM, with the [`WrapContext`]'s associated data, so a wrapped key copied
//! into another slot does not unwrap, exactly as with a key file. A key
//! object that could leave the device (extractable, not sensitive) is
//! refused.
//!
//! Wrapped format: `0x02 ‖ IV (12) ‖ ciphertext (32) ‖ tag (16)`. The vault
//! draws the IV and passes it in; an HSM that insists on drawing it itself
//! (as AWS CloudHSM does) writes its own into the same buffer, and that is
//! what is stored.
//!
//! One logged-in session is kept and used by one call at a time. When the
//! device, the token or the session is lost (unplugged, restarted, network
//! cut), the failing call drops the session and tries once more on a new
//! one; if that fails too, it says [`KeyError::ProviderUnreachable`], and the
//! next call (or health check) tries to connect again, by itself.
//!
//! The unwrapped key comes back from the library in a buffer the library's
//! binding allocates; it is moved into a wiped buffer at once, but the
//! binding's own copy is not wiped (see "Secret hygiene").

use std::fmt;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::{
    random_nonce, KeyError, KeyMaterial, RootKeyProvider, WrapContext, WrappedKey, KEY_LEN, NONCE_LEN, TAG_LEN,
};

/// Format byte of a key wrapped inside an HSM.
const FORMAT_PKCS11_GCM: u8 = 0x02;
/// Length of such a wrapped key.
const WRAPPED_LEN: usize = 1 + NONCE_LEN + KEY_LEN + TAG_LEN;
/// How long a call waits for the session while another call uses it. A
/// call stuck in a device that stopped answering (a network HSM cut off)
/// cannot be interrupted; the others say [`KeyError::ProviderUnreachable`]
/// after this instead of each blocking a thread for as long.
const SESSION_WAIT: Duration = Duration::from_secs(5);

/// Where the root key is: the module, the token, the user PIN and the key.
#[derive(Clone)]
pub struct Pkcs11Config {
    /// The PKCS#11 library (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// The key object's label (`CKA_LABEL`).
    pub key_label: String,
    /// The user PIN; wiped on drop, never shown.
    pub pin: SecretString,
}

impl fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("key_label", &self.key_label)
            .field("pin", &"[redacted]")
            .finish()
    }
}

impl Pkcs11Config {
    pub(crate) fn describe(&self) -> String {
        format!(
            "PKCS#11 key \"{}\" on token \"{}\" (module {})",
            self.key_label,
            self.token_label,
            self.module.display()
        )
    }
}

/// The root key in an HSM (see the [module documentation](self)).
pub struct Pkcs11RootKey {
    token: Token,
    /// The session in use, `None` after it was lost.
    connection: Mutex<Option<Connection>>,
}

/// A loaded PKCS#11 module and the token a configuration names: what the
/// root key and a signing key on a token ([`crate::Pkcs11SigningKey`])
/// share, so that both find the token and log in alike.
pub(crate) struct Token {
    pub(crate) config: Pkcs11Config,
    pub(crate) context: Pkcs11,
}

/// A logged-in session and the root key's handle in it.
struct Connection {
    session: Session,
    key: ObjectHandle,
}

/// Why an operation on the device failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The device, token or session is gone: connect again.
    Lost,
    /// The device refused this input (a wrapped key that does not open).
    Refused,
    /// Anything else: the setup is wrong (mechanism, attributes, PIN...).
    Setup(String),
}

impl Pkcs11RootKey {
    /// Loads the module, logs in to the token and finds the key; refuses a
    /// key that could leave the device. [`KeyError::ProviderUnreachable`]
    /// when the module loads but the token does not answer.
    pub fn open(config: Pkcs11Config) -> Result<Self, KeyError> {
        let provider = Self::load(config)?;
        {
            let mut connection = provider.lock();
            *connection = Some(provider.connect()?);
        }
        Ok(provider)
    }

    /// Creates the root key on the token: a new AES-256 key object, non
    /// extractable, labelled [`Pkcs11Config::key_label`]. Refuses
    /// ([`KeyError::Pkcs11KeyExists`]) when the token already holds a
    /// secret key with that label.
    pub fn create(config: Pkcs11Config) -> Result<Self, KeyError> {
        let provider = Self::load(config)?;
        let session = provider.login()?;
        let template = provider.key_template();
        let found = session.find_objects(&template).map_err(|error| provider.failure(error))?;
        if !found.is_empty() {
            return Err(KeyError::Pkcs11KeyExists { provider: provider.describe() });
        }
        let mut attributes = template;
        attributes.extend([
            Attribute::ValueLen((KEY_LEN as u64).into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Derive(false),
        ]);
        session.generate_key(&Mechanism::AesKeyGen, &attributes).map_err(|error| provider.failure(error))?;
        drop(session);
        let mut connection = provider.lock();
        *connection = Some(provider.connect()?);
        drop(connection);
        Ok(provider)
    }

    fn load(config: Pkcs11Config) -> Result<Self, KeyError> {
        let provider = config.describe();
        let token = Token::load(config).map_err(|failure| match failure {
            Failure::Setup(reason) => KeyError::Pkcs11 { provider: provider.clone(), reason },
            Failure::Lost | Failure::Refused => KeyError::ProviderUnreachable { provider: provider.clone() },
        })?;
        Ok(Self { token, connection: Mutex::new(None) })
    }

    fn lock(&self) -> MutexGuard<'_, Option<Connection>> {
        // A panic while connecting leaves `None` or a whole connection: both usable.
        self.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// [`Self::lock`], waiting at most [`SESSION_WAIT`] for a call in progress.
    fn lock_in_time(&self) -> Result<MutexGuard<'_, Option<Connection>>, KeyError> {
        let deadline = Instant::now() + SESSION_WAIT;
        let mut pause = Duration::from_micros(50);
        loop {
            match self.connection.try_lock() {
                Ok(guard) => return Ok(guard),
                Err(TryLockError::Poisoned(poisoned)) => return Ok(poisoned.into_inner()),
                Err(TryLockError::WouldBlock) => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.unreachable());
            }
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// The attributes that find the root key.
    fn key_template(&self) -> Vec<Attribute> {
        vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Label(self.token.config.key_label.as_bytes().to_vec()),
        ]
    }

    /// A new session on the token, logged in as the user.
    fn login(&self) -> Result<Session, KeyError> {
        self.token.login().map_err(|failure| self.failed(failure))
    }

    /// Logs in and finds the root key, checking it cannot leave the device.
    fn connect(&self) -> Result<Connection, KeyError> {
        let session = self.login()?;
        let found = session.find_objects(&self.key_template()).map_err(|error| self.failure(error))?;
        let key = match found[..] {
            [key] => key,
            [] => {
                return Err(self.setup(
                    "the token holds no AES key with this label; create it with `mnvault root-key init`, or check \
                     root_key.key_label"
                        .into(),
                ))
            }
            _ => return Err(self.setup("the token holds more than one AES key with this label".into())),
        };
        let wanted = [
            AttributeType::Token,
            AttributeType::Sensitive,
            AttributeType::Extractable,
            AttributeType::Encrypt,
            AttributeType::Decrypt,
            AttributeType::ValueLen,
        ];
        let attributes = session.get_attributes(key, &wanted).map_err(|error| self.failure(error))?;
        let mut fit = 0;
        for attribute in &attributes {
            fit += match attribute {
                Attribute::Token(true)
                | Attribute::Sensitive(true)
                | Attribute::Extractable(false)
                | Attribute::Encrypt(true)
                | Attribute::Decrypt(true) => 1,
                Attribute::ValueLen(len) if u64::from(*len) == KEY_LEN as u64 => 1,
                _ => 0,
            };
        }
        if fit != wanted.len() {
            return Err(self.setup(
                "the key is not a 32-byte AES key that stays on the token (it must be a token object, sensitive, \
                 not extractable, and allowed to encrypt and decrypt); create one with `mnvault root-key init`"
                    .into(),
            ));
        }
        Ok(Connection { session, key })
    }

    /// Runs `operation` on the session, connecting first if there is none,
    /// and once more on a new session if the device or session was lost.
    fn with_connection<T>(
        &self,
        operation: impl Fn(&Connection) -> Result<T, CkError>,
        classify: impl Fn(CkError) -> Failure,
    ) -> Result<T, KeyError> {
        let mut connection = self.lock_in_time()?;
        for _ in 0..2 {
            if connection.is_none() {
                *connection = Some(self.connect()?);
            }
            let Some(current) = connection.as_ref() else { continue };
            match operation(current).map_err(&classify) {
                Ok(value) => return Ok(value),
                Err(Failure::Lost) => *connection = None,
                Err(Failure::Refused) => return Err(KeyError::UnwrapFailed),
                Err(Failure::Setup(reason)) => return Err(self.setup(reason)),
            }
        }
        Err(self.unreachable())
    }

    fn unreachable(&self) -> KeyError {
        KeyError::ProviderUnreachable { provider: self.describe() }
    }

    fn setup(&self, reason: String) -> KeyError {
        KeyError::Pkcs11 { provider: self.describe(), reason }
    }

    /// A failure outside wrap and unwrap: lost means unreachable.
    fn failure(&self, error: CkError) -> KeyError {
        self.failed(classify(error))
    }

    fn failed(&self, failure: Failure) -> KeyError {
        match failure {
            Failure::Lost => self.unreachable(),
            Failure::Refused => KeyError::UnwrapFailed,
            Failure::Setup(reason) => self.setup(reason),
        }
    }
}

impl Token {
    /// Loads and initialises the module the configuration names.
    pub(crate) fn load(config: Pkcs11Config) -> Result<Self, Failure> {
        if config.token_label.is_empty() || config.key_label.is_empty() {
            return Err(Failure::Setup("the token label and the key label must not be empty".into()));
        }
        let context = Pkcs11::new(&config.module).map_err(|error| {
            Failure::Setup(format!(
                "cannot load the PKCS#11 module: {error}; check root_key.module (or a CA's ca-key.toml) and that \
                 the library is installed"
            ))
        })?;
        let token = Self { config, context };
        token.initialize()?;
        Ok(token)
    }

    /// `C_Initialize`, which another user of the same library in this
    /// process may have done already.
    fn initialize(&self) -> Result<(), Failure> {
        match self.context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
            Err(error) => Err(classify(error)),
        }
    }

    /// The one token with the configured label; [`Failure::Lost`] when none has it.
    pub(crate) fn slot(&self) -> Result<Slot, Failure> {
        let slots = match self.context.get_slots_with_token() {
            Err(CkError::Pkcs11(RvError::CryptokiNotInitialized, _)) => {
                self.initialize()?;
                self.context.get_slots_with_token()
            }
            other => other,
        }
        .map_err(classify)?;
        let mut found = Vec::new();
        for slot in slots {
            // A slot whose token went away meanwhile is simply not it.
            if let Ok(info) = self.context.get_token_info(slot) {
                if info.label().trim_end() == self.config.token_label {
                    found.push(slot);
                }
            }
        }
        match found[..] {
            [slot] => Ok(slot),
            [] => Err(Failure::Lost),
            _ => Err(Failure::Setup("more than one token has this label; give each token its own label".into())),
        }
    }

    /// A new session on the token, logged in as the user.
    pub(crate) fn login(&self) -> Result<Session, Failure> {
        let session = self.context.open_rw_session(self.slot()?).map_err(classify)?;
        match session.login(UserType::User, Some(&self.config.pin)) {
            // The login state is per application and token: another session of ours logged in.
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(CkError::Pkcs11(RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange, _)) => {
                Err(Failure::Setup(
                    "the token refused the user PIN; check root_key.pin_file or root_key.pin_credential".into(),
                ))
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(Failure::Setup(
                "the token's user PIN is locked; the token's security officer must unlock it".into(),
            )),
            Err(error) => Err(classify(error)),
        }
    }
}

/// Which failures mean the device, token or session went away.
pub(crate) fn classify(error: CkError) -> Failure {
    match &error {
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::DeviceRemoved
            | RvError::DeviceError
            | RvError::DeviceMemory
            | RvError::TokenNotPresent
            | RvError::TokenNotRecognized
            | RvError::UserNotLoggedIn
            | RvError::CryptokiNotInitialized
            | RvError::KeyHandleInvalid
            | RvError::ObjectHandleInvalid
            | RvError::GeneralError
            | RvError::FunctionFailed,
            _,
        ) => Failure::Lost,
        other => Failure::Setup(format!("the device refused an operation: {other}")),
    }
}

/// For a decryption, a refused input is a wrapped key that does not open.
fn classify_decrypt(error: CkError) -> Failure {
    match error {
        CkError::Pkcs11(
            RvError::EncryptedDataInvalid
            | RvError::EncryptedDataLenRange
            | RvError::DataInvalid
            | RvError::DataLenRange
            | RvError::MechanismParamInvalid,
            _,
        ) => Failure::Refused,
        other => classify(other),
    }
}

impl RootKeyProvider for Pkcs11RootKey {
    fn describe(&self) -> String {
        self.token.config.describe()
    }

    fn wrap(&self, key: &KeyMaterial, context: &WrapContext<'_>) -> Result<WrappedKey, KeyError> {
        let aad = context.associated_data();
        let (iv, ciphertext) = self.with_connection(
            |connection| {
                let mut iv = random_nonce();
                let params = GcmParams::new(&mut iv, &aad, ((TAG_LEN * 8) as u64).into())?;
                let ciphertext =
                    connection.session.encrypt(&Mechanism::AesGcm(params), connection.key, key.expose_secret())?;
                Ok((iv, ciphertext))
            },
            classify,
        )?;
        if ciphertext.len() != KEY_LEN + TAG_LEN {
            return Err(self.setup("the device's AES-GCM answer has the wrong length".into()));
        }
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.push(FORMAT_PKCS11_GCM);
        out.extend_from_slice(&iv);
        out.extend_from_slice(&ciphertext);
        Ok(WrappedKey::from_bytes(out))
    }

    fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext<'_>) -> Result<KeyMaterial, KeyError> {
        let bytes = wrapped.as_bytes();
        if bytes.len() != WRAPPED_LEN || bytes[0] != FORMAT_PKCS11_GCM {
            return Err(KeyError::UnwrapFailed);
        }
        let aad = context.associated_data();
        let plain = self
            .with_connection(
                |connection| {
                    let mut iv = [0u8; NONCE_LEN];
                    iv.copy_from_slice(&bytes[1..1 + NONCE_LEN]);
                    let params = GcmParams::new(&mut iv, &aad, ((TAG_LEN * 8) as u64).into())?;
                    let mechanism = Mechanism::AesGcm(params);
                    match connection.session.decrypt(&mechanism, connection.key, &bytes[1 + NONCE_LEN..]) {
                        Ok(plain) => Ok(Some(Zeroizing::new(plain))),
                        // SoftHSM2 (and others) answer a failed tag with a general
                        // error: it is a refused input only if the session still
                        // answers, logged in.
                        Err(CkError::Pkcs11(RvError::GeneralError | RvError::FunctionFailed, _))
                            if connection.session.get_session_info().is_ok_and(|info| {
                                matches!(info.session_state(), SessionState::RoUser | SessionState::RwUser)
                            }) =>
                        {
                            Ok(None)
                        }
                        Err(error) => Err(error),
                    }
                },
                classify_decrypt,
            )?
            .ok_or(KeyError::UnwrapFailed)?;
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        if plain.len() != KEY_LEN {
            return Err(KeyError::UnwrapFailed);
        }
        key.copy_from_slice(&plain);
        Ok(KeyMaterial::from_bytes(*key))
    }

    /// Asks the device about the session (connecting again first if it was
    /// lost or logged out): a lost device answers at once with an error; a
    /// device that hangs is bounded by the health check's own timeout.
    fn check(&self) -> Result<(), KeyError> {
        self.with_connection(
            |connection| match connection.session.get_session_info()?.session_state() {
                SessionState::RoUser | SessionState::RwUser => Ok(()),
                _ => Err(CkError::Pkcs11(RvError::UserNotLoggedIn, Function::GetSessionInfo)),
            },
            classify,
        )
    }
}

impl fmt::Debug for Pkcs11RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11RootKey").field("config", &self.token.config).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh SoftHSM2 token for one test, or `None` (skipped) when SoftHSM2
    /// is not installed on a local run; under CI its absence fails.
    fn softhsm_token() -> Option<Pkcs11Config> {
        softhsm::token().map(|(module, token_label, pin)| Pkcs11Config {
            module,
            token_label,
            key_label: "mnvault-root".into(),
            pin,
        })
    }

    #[test]
    fn a_key_created_on_the_token_wraps_and_unwraps_bound_to_its_slot() {
        let Some(config) = softhsm_token() else { return };
        let created = Pkcs11RootKey::create(config.clone()).unwrap();
        let ctx = WrapContext::TenantRecordKey { tenant: "acme", version: 1 };
        let key = KeyMaterial::generate();
        let wrapped = created.wrap(&key, &ctx).unwrap();
        assert_eq!(wrapped.as_bytes().len(), WRAPPED_LEN);
        assert_eq!(wrapped.as_bytes()[0], FORMAT_PKCS11_GCM);
        assert!(!wrapped.as_bytes().windows(KEY_LEN).any(|w| w == key.expose_secret()));
        drop(created);

        let opened = Pkcs11RootKey::open(config.clone()).unwrap();
        assert_eq!(opened.unwrap(&wrapped, &ctx).unwrap().expose_secret(), key.expose_secret());
        opened.check().unwrap();
        for other in [WrapContext::TenantRecordKey { tenant: "acme", version: 2 }, WrapContext::AuditChainKey] {
            let result = opened.unwrap(&wrapped, &other);
            assert!(matches!(result, Err(KeyError::UnwrapFailed)), "{other:?}: {result:?}");
        }
        for i in [0, 1, NONCE_LEN + 1, WRAPPED_LEN - 1] {
            let mut bytes = wrapped.as_bytes().to_vec();
            bytes[i] ^= 1;
            let result = opened.unwrap(&WrappedKey::from_bytes(bytes), &ctx);
            assert!(matches!(result, Err(KeyError::UnwrapFailed)), "byte {i}: {result:?}");
        }
        // A key file's wrapped key is not this provider's.
        let dir = tempfile::tempdir().unwrap();
        let file = crate::RootKeyFile::create(&dir.path().join("root.key")).unwrap();
        assert!(matches!(opened.unwrap(&file.wrap(&key, &ctx).unwrap(), &ctx), Err(KeyError::UnwrapFailed)));
    }

    #[test]
    fn the_key_cannot_leave_the_token_and_is_not_created_twice() {
        let Some(config) = softhsm_token() else { return };
        let provider = Pkcs11RootKey::create(config.clone()).unwrap();
        {
            let connection = provider.lock();
            let connection = connection.as_ref().unwrap();
            let attributes = connection
                .session
                .get_attributes(
                    connection.key,
                    &[AttributeType::Extractable, AttributeType::Sensitive, AttributeType::NeverExtractable],
                )
                .unwrap();
            for attribute in &attributes {
                match attribute {
                    Attribute::Extractable(extractable) => assert!(!extractable),
                    Attribute::Sensitive(sensitive) => assert!(sensitive),
                    Attribute::NeverExtractable(never) => assert!(never),
                    other => panic!("unexpected {other:?}"),
                }
            }
            // Asking for its value is refused by the device.
            let value = connection.session.get_attributes(connection.key, &[AttributeType::Value]);
            assert!(
                !matches!(&value, Ok(attributes) if attributes.iter().any(|a| matches!(a, Attribute::Value(_)))),
                "{value:?}"
            );
        }
        let again = Pkcs11RootKey::create(config.clone()).unwrap_err();
        assert!(matches!(again, KeyError::Pkcs11KeyExists { .. }), "{again}");
    }

    #[test]
    fn a_wrong_pin_a_missing_key_or_token_are_named() {
        let Some(config) = softhsm_token() else { return };
        let missing = Pkcs11RootKey::open(config.clone()).unwrap_err();
        assert!(missing.to_string().contains("root-key init"), "{missing}");

        let wrong_pin = Pkcs11Config { pin: SecretString::from("99999999".to_owned()), ..config.clone() };
        let error = Pkcs11RootKey::open(wrong_pin).unwrap_err();
        assert!(error.to_string().contains("refused the user PIN"), "{error}");
        assert!(!error.to_string().contains("99999999"));

        let no_token = Pkcs11Config { token_label: "no-such-token".into(), ..config.clone() };
        assert!(matches!(Pkcs11RootKey::open(no_token), Err(KeyError::ProviderUnreachable { .. })));

        let no_module = Pkcs11Config { module: "/nonexistent/libpkcs11.so".into(), ..config };
        let error = Pkcs11RootKey::open(no_module).unwrap_err();
        assert!(error.to_string().contains("cannot load the PKCS#11 module"), "{error}");
    }

    #[test]
    fn a_call_stuck_in_the_device_makes_the_others_unreachable_not_hang() {
        let Some(config) = softhsm_token() else { return };
        let provider = std::sync::Arc::new(Pkcs11RootKey::create(config).unwrap());
        // A call stuck in the device (a network HSM that stopped answering) holds the session.
        let stuck = provider.lock();
        let (sent, answer) = std::sync::mpsc::channel();
        let other = provider.clone();
        std::thread::spawn(move || sent.send(other.check()));
        let answered = answer.recv_timeout(std::time::Duration::from_secs(30));
        drop(stuck);
        assert!(matches!(answered, Ok(Err(KeyError::ProviderUnreachable { .. }))), "{answered:?}");
    }

    #[test]
    fn a_lost_login_is_replaced_by_itself_on_the_next_use() {
        let Some(config) = softhsm_token() else { return };
        let provider = Pkcs11RootKey::create(config).unwrap();
        let ctx = WrapContext::AuditChainKey;
        let key = KeyMaterial::generate();
        let wrapped = provider.wrap(&key, &ctx).unwrap();
        let logout = || {
            // The login is the application's: logging out on another session
            // logs the provider's session out too, as a device restart would.
            let other = provider.token.context.open_ro_session(provider.token.slot().unwrap()).unwrap();
            other.logout().unwrap();
        };
        logout();
        assert_eq!(provider.unwrap(&wrapped, &ctx).unwrap().expose_secret(), key.expose_secret());
        logout();
        provider.check().unwrap();
        assert!(provider.wrap(&key, &ctx).is_ok());
    }
}

/// SoftHSM2 tokens for the tests: one token directory for the process
/// (SOFTHSM2_CONF is read once per process, at `C_Initialize`), one token
/// per test, told apart by label.
#[cfg(test)]
pub(crate) mod softhsm {
    use std::path::PathBuf;
    use std::sync::{Mutex, OnceLock};

    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::session::UserType;
    use secrecy::SecretString;

    /// Where the tests find SoftHSM2's module (Debian's `softhsm2` package).
    pub(crate) const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

    /// The module, a fresh token's label and its user PIN; `None` when
    /// SoftHSM2 is missing on a local run (said once). Panics under CI.
    pub(crate) fn token() -> Option<(PathBuf, String, SecretString)> {
        static SETUP: OnceLock<Option<(tempfile::TempDir, Pkcs11)>> = OnceLock::new();
        static CREATING: Mutex<u32> = Mutex::new(0);
        let setup = SETUP.get_or_init(|| {
            if !std::path::Path::new(MODULE).is_file() {
                if std::env::var_os("CI").is_some() {
                    panic!("CI must run the PKCS#11 tests, but SoftHSM2 is not installed ({MODULE})");
                }
                eprintln!("SKIPPED: the PKCS#11 tests (no SoftHSM2 at {MODULE}; apt-get install softhsm2)");
                return None;
            }
            let dir = tempfile::tempdir().expect("token directory");
            std::fs::create_dir(dir.path().join("tokens")).unwrap();
            let conf = dir.path().join("softhsm2.conf");
            std::fs::write(
                &conf,
                format!("directories.tokendir = {}/tokens\nobjectstore.backend = file\n", dir.path().display()),
            )
            .unwrap();
            std::env::set_var("SOFTHSM2_CONF", &conf);
            let context = Pkcs11::new(MODULE).expect("load SoftHSM2");
            context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).expect("initialise SoftHSM2");
            Some((dir, context))
        });
        let (_, context) = setup.as_ref()?;
        let mut count = CREATING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *count += 1;
        let label = format!("mnvault-test-{}-{}", std::process::id(), *count);
        let (so_pin, user_pin) = (SecretString::from("5678".to_owned()), SecretString::from("123456".to_owned()));
        let free = context
            .get_all_slots()
            .unwrap()
            .into_iter()
            .find(|slot| context.get_token_info(*slot).is_ok_and(|info| !info.token_initialized()))
            .expect("SoftHSM2 always offers a free slot");
        context.init_token(free, &so_pin, &label).unwrap();
        let slot = context
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|slot| context.get_token_info(*slot).is_ok_and(|info| info.label().trim_end() == label))
            .expect("the new token");
        let session = context.open_rw_session(slot).unwrap();
        session.login(UserType::So, Some(&so_pin)).unwrap();
        session.init_pin(&user_pin).unwrap();
        session.logout().unwrap();
        Some((PathBuf::from(MODULE), label, user_pin))
    }
}
