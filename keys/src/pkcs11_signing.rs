//! An ECDSA P-256 signing key inside an HSM, over PKCS#11: the CA key of
//! `mnvault pki init` when the vault's root key is on a token, on the same
//! token (so the same PIN, and the same custody).
//!
//! The key pair is made on the token ([`Pkcs11SigningKey::generate`]): the
//! private key is a token object, private, sensitive, never extractable,
//! allowed to sign and nothing else; the public key sits beside it under the
//! same label, so that [`Pkcs11SigningKey::open`] can read its point. Opening
//! refuses a private key that could leave the device, and one that does not
//! match its public key (a test signature is made and checked), so a
//! swapped public key object cannot make certificates that do not verify.
//!
//! Signing hashes here (SHA-256) and asks the token for `CKM_ECDSA` over the
//! digest: every PKCS#11 token with EC keys offers `CKM_ECDSA`, fewer offer
//! the hashing variants. The token answers the raw `r ‖ s`; X.509 wants the
//! DER `ECDSA-Sig-Value`, which [`der_signature`] makes through `p256`.
//!
//! Unlike the root key, this key serves a command that runs once: one
//! session, no reconnecting.

use std::fmt;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::der::asn1::OctetStringRef;
use p256::pkcs8::der::{Decode as _, Encode as _};
use p256::pkcs8::{AssociatedOid as _, EncodePublicKey as _};
use sha2::{Digest as _, Sha256};

use crate::pkcs11::{classify, Failure, Token};
use crate::{KeyError, Pkcs11Config};

/// What [`Pkcs11SigningKey::open`] signs to check the pair belongs together.
const PAIR_CHECK: &[u8] = b"mnvault/v1/pkcs11-signing-key-pair-check";

/// An ECDSA P-256 private key on a token and its public key (see the
/// [module documentation](self)). [`Pkcs11Config::key_label`] names both
/// objects.
pub struct Pkcs11SigningKey {
    token: Token,
    session: Session,
    private: ObjectHandle,
    /// The public key, SEC1 uncompressed (`04 ‖ x ‖ y`).
    public: Vec<u8>,
}

impl Pkcs11SigningKey {
    /// Makes a new key pair on the token, labelled
    /// [`Pkcs11Config::key_label`], with `id` as `CKA_ID`. Refuses
    /// ([`KeyError::Pkcs11SigningKey`]) when the token holds any object with
    /// that label already.
    pub fn generate(config: Pkcs11Config, id: &[u8]) -> Result<Self, KeyError> {
        let (token, session) = Self::login(config)?;
        let label = Attribute::Label(token.config.key_label.as_bytes().to_vec());
        let taken = session.find_objects(std::slice::from_ref(&label)).map_err(|e| failed(&token, classify(e)))?;
        if !taken.is_empty() {
            return Err(setup(&token, "the token already holds an object with this label; nothing was created".into()));
        }
        let curve = p256::NistP256::OID.to_der().map_err(|_| setup(&token, "cannot encode the P-256 OID".into()))?;
        // Both halves: EC, the label and id, kept on the token.
        let pair = |class| {
            let common = [Attribute::KeyType(KeyType::EC), label.clone(), Attribute::Id(id.to_vec())];
            [&[Attribute::Class(class), Attribute::Token(true)][..], &common].concat()
        };
        let mut public_template = pair(ObjectClass::PUBLIC_KEY);
        public_template.extend([Attribute::EcParams(curve), Attribute::Private(false), Attribute::Verify(true)]);
        public_template.extend([Attribute::Encrypt(false), Attribute::Wrap(false), Attribute::Derive(false)]);
        // The private half: sensitive, never extractable, for signing only.
        let mut private_template = pair(ObjectClass::PRIVATE_KEY);
        private_template.extend([Attribute::Private(true), Attribute::Sensitive(true), Attribute::Extractable(false)]);
        private_template.extend([Attribute::Sign(true), Attribute::SignRecover(false), Attribute::Decrypt(false)]);
        private_template.extend([Attribute::Unwrap(false), Attribute::Derive(false)]);
        session
            .generate_key_pair(&Mechanism::EccKeyPairGen, &public_template, &private_template)
            .map_err(|e| failed(&token, classify(e)))?;
        Self::find(token, session)
    }

    /// Destroys both halves of the pair on the token: a CA whose files
    /// could not be written must not leave a key nobody refers to.
    pub fn destroy(self) -> Result<(), KeyError> {
        let label = Attribute::Label(self.token.config.key_label.as_bytes().to_vec());
        let objects = self.session.find_objects(&[label]).map_err(|e| failed(&self.token, classify(e)))?;
        for object in objects {
            self.session.destroy_object(object).map_err(|e| failed(&self.token, classify(e)))?;
        }
        Ok(())
    }

    /// Finds the key pair labelled [`Pkcs11Config::key_label`] on the
    /// token, logged in with the configuration's PIN; refuses a private key
    /// that could leave the device or that is not its public key's.
    /// [`KeyError::Pkcs11SigningKeyUnreachable`] when the token is not there.
    pub fn open(config: Pkcs11Config) -> Result<Self, KeyError> {
        let (token, session) = Self::login(config)?;
        Self::find(token, session)
    }

    fn login(config: Pkcs11Config) -> Result<(Token, Session), KeyError> {
        let describe = config.describe();
        let token = Token::load(config).map_err(|failure| match failure {
            Failure::Setup(reason) => KeyError::Pkcs11SigningKey { key: describe.clone(), reason },
            Failure::Lost | Failure::Refused => KeyError::Pkcs11SigningKeyUnreachable { key: describe.clone() },
        })?;
        let session = token.login().map_err(|failure| failed(&token, failure))?;
        Ok((token, session))
    }

    fn find(token: Token, session: Session) -> Result<Self, KeyError> {
        let one = |class: ObjectClass, what: &str| -> Result<ObjectHandle, KeyError> {
            let template = [
                Attribute::Class(class),
                Attribute::KeyType(KeyType::EC),
                Attribute::Label(token.config.key_label.as_bytes().to_vec()),
            ];
            let found = session.find_objects(&template).map_err(|e| failed(&token, classify(e)))?;
            match found[..] {
                [object] => Ok(object),
                [] => Err(setup(&token, format!("the token holds no EC {what} with this label"))),
                _ => Err(setup(&token, format!("the token holds more than one EC {what} with this label"))),
            }
        };
        let (private, public) =
            (one(ObjectClass::PRIVATE_KEY, "private key")?, one(ObjectClass::PUBLIC_KEY, "public key")?);
        let wanted = [
            AttributeType::Token,
            AttributeType::Private,
            AttributeType::Sensitive,
            AttributeType::Extractable,
            AttributeType::Sign,
        ];
        let attributes = session.get_attributes(private, &wanted).map_err(|e| failed(&token, classify(e)))?;
        let fit = attributes
            .iter()
            .filter(|attribute| {
                matches!(
                    attribute,
                    Attribute::Token(true)
                        | Attribute::Private(true)
                        | Attribute::Sensitive(true)
                        | Attribute::Extractable(false)
                        | Attribute::Sign(true)
                )
            })
            .count();
        if fit != wanted.len() {
            return Err(setup(
                &token,
                "the private key could leave the token or cannot sign (it must be a private token object, \
                 sensitive, not extractable, allowed to sign); make a new CA with `mnvault pki init --hsm`"
                    .into(),
            ));
        }
        let point =
            session.get_attributes(public, &[AttributeType::EcPoint]).map_err(|e| failed(&token, classify(e)))?;
        let public = match &point[..] {
            [Attribute::EcPoint(point)] => p256_point(point),
            _ => None,
        }
        .ok_or_else(|| setup(&token, "the public key is not a P-256 point".into()))?;
        let key = Self { token, session, private, public };
        let signature = key.sign(PAIR_CHECK)?;
        if !verifies(&key.public, PAIR_CHECK, &signature) {
            return Err(setup(&key.token, "the private key does not belong to the public key with this label".into()));
        }
        Ok(key)
    }

    /// The public key, SEC1 uncompressed (`04 ‖ x ‖ y`): what a certificate's
    /// subjectPublicKey holds for an EC key.
    pub fn public_key(&self) -> &[u8] {
        &self.public
    }

    /// The public key as a DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> Vec<u8> {
        p256::PublicKey::from_sec1_bytes(&self.public)
            .ok()
            .and_then(|key| key.to_public_key_der().ok())
            .map(|der| der.as_bytes().to_vec())
            .expect("the point was checked when the key was opened")
    }

    /// ECDSA P-256 with SHA-256 over `message`, made on the token, as the
    /// DER `ECDSA-Sig-Value` X.509 carries.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let digest = Sha256::digest(message);
        let raw = self
            .session
            .sign(&Mechanism::Ecdsa, self.private, &digest)
            .map_err(|e| failed(&self.token, classify(e)))?;
        der_signature(&raw)
            .ok_or_else(|| setup(&self.token, "the token's ECDSA answer is not a P-256 signature".into()))
    }

    /// Which key on which token, as errors name it.
    pub fn describe(&self) -> String {
        self.token.config.describe()
    }
}

impl fmt::Debug for Pkcs11SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11SigningKey").field("config", &self.token.config).finish_non_exhaustive()
    }
}

fn setup(token: &Token, reason: String) -> KeyError {
    KeyError::Pkcs11SigningKey { key: token.config.describe(), reason }
}

fn failed(token: &Token, failure: Failure) -> KeyError {
    match failure {
        Failure::Setup(reason) => setup(token, reason),
        Failure::Lost | Failure::Refused => KeyError::Pkcs11SigningKeyUnreachable { key: token.config.describe() },
    }
}

/// The uncompressed P-256 point in a `CKA_EC_POINT`: a DER OCTET STRING
/// by the standard, the bare point on some tokens.
fn p256_point(value: &[u8]) -> Option<Vec<u8>> {
    let point = OctetStringRef::from_der(value).map(|octets| octets.as_bytes()).unwrap_or(value);
    let key = p256::PublicKey::from_sec1_bytes(point).ok()?;
    Some(key.to_encoded_point(false).as_bytes().to_vec())
}

/// A token's raw ECDSA P-256 answer (`r ‖ s`, 32 bytes each) as the DER
/// `ECDSA-Sig-Value`; `None` when it is not a valid signature's.
fn der_signature(raw: &[u8]) -> Option<Vec<u8>> {
    Some(Signature::from_slice(raw).ok()?.to_der().as_bytes().to_vec())
}

/// Whether the DER `signature` is `public`'s over SHA-256 of `message`.
fn verifies(public: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let (Ok(key), Ok(signature)) = (VerifyingKey::from_sec1_bytes(public), Signature::from_der(signature)) else {
        return false;
    };
    key.verify_prehash(&Sha256::digest(message), &signature).is_ok()
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;
    use crate::pkcs11::softhsm;

    fn softhsm_config(key_label: &str) -> Option<Pkcs11Config> {
        softhsm::token().map(|(module, token_label, pin)| Pkcs11Config {
            module,
            token_label,
            key_label: key_label.into(),
            pin,
        })
    }

    #[test]
    fn a_raw_signature_becomes_der_with_minimal_positive_integers() {
        // r with its top bit set gains a zero byte; s is as it is.
        let (r, s) = ([0x80u8; 32], [0x01u8; 32]);
        let mut expected = vec![0x30, 0x45, 0x02, 0x21, 0x00];
        expected.extend_from_slice(&r);
        expected.extend_from_slice(&[0x02, 0x20]);
        expected.extend_from_slice(&s);
        assert_eq!(der_signature(&[r, s].concat()).unwrap(), expected);

        // r = 1 loses its leading zeros.
        let mut r = [0u8; 32];
        r[31] = 1;
        let mut s = [0xffu8; 32];
        s[0] = 0x7f;
        let mut expected = vec![0x30, 0x25, 0x02, 0x01, 0x01, 0x02, 0x20];
        expected.extend_from_slice(&s);
        assert_eq!(der_signature(&[r, s].concat()).unwrap(), expected);
    }

    #[test]
    fn what_is_no_p256_signature_is_refused() {
        assert!(der_signature(&[1u8; 63]).is_none(), "too short");
        assert!(der_signature(&[1u8; 65]).is_none(), "too long");
        assert!(der_signature(&[[0u8; 32], [1u8; 32]].concat()).is_none(), "r = 0");
        // r at or above the group order is no signature's.
        assert!(der_signature(&[[0xffu8; 32], [1u8; 32]].concat()).is_none(), "r >= n");
    }

    #[test]
    fn a_der_signature_made_from_raw_verifies_as_x509_checks_it() {
        use p256::ecdsa::signature::hazmat::PrehashSigner as _;
        let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let message = b"tbsCertificate";
        let signature: Signature = key.sign_prehash(&Sha256::digest(message)).unwrap();
        let der = der_signature(&signature.to_bytes()).unwrap();
        let public = key.verifying_key().to_encoded_point(false);
        assert!(verifies(public.as_bytes(), message, &der));
        assert!(!verifies(public.as_bytes(), b"another message", &der));
        // A bare point and one in an OCTET STRING read alike.
        let wrapped = OctetStringRef::new(public.as_bytes()).unwrap().to_der().unwrap();
        assert_eq!(p256_point(&wrapped).unwrap(), public.as_bytes());
        assert_eq!(p256_point(public.as_bytes()).unwrap(), public.as_bytes());
        assert!(p256_point(&[4u8; 65]).is_none(), "not on the curve");
    }

    #[test]
    fn a_key_pair_made_on_the_token_signs_and_never_leaves_it() {
        let Some(config) = softhsm_config("mnvault-ca-test") else { return };
        let key = Pkcs11SigningKey::generate(config.clone(), b"ca-id").unwrap();
        let signature = key.sign(b"a certificate").unwrap();
        assert!(verifies(key.public_key(), b"a certificate", &signature));
        let spki = p256::PublicKey::from_sec1_bytes(key.public_key()).unwrap().to_public_key_der().unwrap();
        assert_eq!(key.public_key_der(), spki.as_bytes());

        // What `open` does not check itself: never extractable since made, no use but signing, the id.
        let wanted = [Attribute::NeverExtractable(true), Attribute::Decrypt(false), Attribute::Derive(false)];
        let types: Vec<_> =
            wanted.iter().chain([&Attribute::Id(b"ca-id".to_vec())]).map(Attribute::attribute_type).collect();
        let found = key.session.get_attributes(key.private, &types).unwrap();
        assert_eq!(found[..3], wanted, "{found:?}");
        assert_eq!(found[3], Attribute::Id(b"ca-id".to_vec()));
        let value = key.session.get_attributes(key.private, &[AttributeType::Value]);
        assert!(
            !matches!(&value, Ok(attributes) if attributes.iter().any(|a| matches!(a, Attribute::Value(_)))),
            "{value:?}"
        );
        let public = key.public_key().to_vec();
        drop(key);

        // Found again by its label; never made twice under it.
        let opened = Pkcs11SigningKey::open(config.clone()).unwrap();
        assert_eq!(opened.public_key(), public);
        assert!(verifies(&public, b"again", &opened.sign(b"again").unwrap()));
        let again = Pkcs11SigningKey::generate(config.clone(), b"ca-id").unwrap_err();
        assert!(again.to_string().contains("already holds an object with this label"), "{again}");

        // Destroyed (a CA whose files could not be written): both halves go,
        // and the label is free again.
        opened.destroy().unwrap();
        let gone = Pkcs11SigningKey::open(config.clone()).unwrap_err();
        assert!(gone.to_string().contains("holds no EC private key with this label"), "{gone}");
        let remade = Pkcs11SigningKey::generate(config, b"ca-id").unwrap();
        assert_ne!(remade.public_key(), public);
    }

    #[test]
    fn a_wrong_pin_a_missing_key_or_token_are_named_and_the_pin_is_never_shown() {
        let Some(config) = softhsm_config("mnvault-ca-missing") else { return };
        let missing = Pkcs11SigningKey::open(config.clone()).unwrap_err();
        assert!(missing.to_string().contains("holds no EC private key with this label"), "{missing}");

        let wrong = Pkcs11Config { pin: SecretString::from("99999999".to_owned()), ..config.clone() };
        let error = Pkcs11SigningKey::generate(wrong, b"id").unwrap_err();
        assert!(error.to_string().contains("refused the user PIN"), "{error}");
        assert!(!format!("{error}{error:?}").contains("99999999"));

        let no_token = Pkcs11Config { token_label: "no-such-token".into(), ..config.clone() };
        let error = Pkcs11SigningKey::open(no_token).unwrap_err();
        assert!(matches!(error, KeyError::Pkcs11SigningKeyUnreachable { .. }), "{error}");

        let key = Pkcs11SigningKey::generate(config.clone(), b"id").unwrap();
        let debug = format!("{key:?}");
        assert!(debug.contains("mnvault-ca-missing") && !debug.contains("123456"), "{debug}");
    }

    #[test]
    fn a_private_key_that_could_leave_the_token_is_refused() {
        let Some(config) = softhsm_config("mnvault-ca-extractable") else { return };
        // As another tool could make it: an exportable pair under the label.
        let (token, session) = Pkcs11SigningKey::login(config.clone()).unwrap();
        let label = Attribute::Label(config.key_label.as_bytes().to_vec());
        let public = [
            Attribute::Token(true),
            Attribute::EcParams(p256::NistP256::OID.to_der().unwrap()),
            label.clone(),
            Attribute::Verify(true),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            label,
            Attribute::Sign(true),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
        ];
        session.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private).unwrap();
        drop((session, token));
        let error = Pkcs11SigningKey::open(config).unwrap_err();
        assert!(error.to_string().contains("could leave the token"), "{error}");
    }
}
