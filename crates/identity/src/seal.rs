//! Secrets at rest: AES-256-GCM with a key the database never holds.
//!
//! A copy of a database alone must reveal none of its secrets (the CA's keys, TOTP secrets,
//! signing keys), so each is stored sealed: encrypted with a key that comes from the environment
//! or a file (`STRATUS_SEAL_KEY` / `STRATUS_SEAL_KEY_FILE`). The key text is one or more lines
//! `<id>:<base64 of 32 bytes>`; the first line seals, every line opens. Rotating the key is
//! putting a new line first: old values still open, and a service re-seals them with the new key
//! ([`Sealer::is_current`]) until the old line can go.
//!
//! A sealed value is `sealed:v1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>`. The caller names
//! what the value is (`context`, e.g. `totp:<user id>`), and that name is authenticated with it,
//! so a sealed value copied into another row does not open there.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

const PREFIX: &str = "sealed:v1:";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("the seal key text is empty: it needs at least one line `<id>:<base64 of 32 bytes>`")]
    NoKey,
    #[error("seal key line {0} must be `<id>:<base64 of 32 bytes>` with an id of letters, digits, '-' or '_'")]
    BadKeyLine(usize),
    #[error("seal key id `{0}` appears twice")]
    DuplicateId(String),
    #[error("not a sealed value")]
    NotSealed,
    #[error("sealed with key `{0}`, which is not among the seal keys")]
    UnknownKey(String),
    #[error("the sealed value does not open with its key (corrupt, or sealed for another field)")]
    Corrupt,
}

struct SealKey {
    id: String,
    key: LessSafeKey,
}

pub struct Sealer {
    keys: Vec<SealKey>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Sealer").field("key_ids", &ids).finish()
    }
}

impl Sealer {
    /// Reads key text: one `<id>:<base64>` a line, the first the current one. Blank lines and
    /// lines starting with `#` are skipped.
    pub fn parse(text: &str) -> Result<Self, SealError> {
        let mut keys: Vec<SealKey> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (id, encoded) = line.split_once(':').ok_or(SealError::BadKeyLine(n + 1))?;
            let id_ok = !id.is_empty()
                && id.len() <= 32
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            let bytes = STANDARD
                .decode(encoded.trim())
                .map_err(|_| SealError::BadKeyLine(n + 1))?;
            if !id_ok || bytes.len() != 32 {
                return Err(SealError::BadKeyLine(n + 1));
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(SealError::DuplicateId(id.to_string()));
            }
            let unbound =
                UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| SealError::BadKeyLine(n + 1))?;
            keys.push(SealKey {
                id: id.to_string(),
                key: LessSafeKey::new(unbound),
            });
        }
        if keys.is_empty() {
            return Err(SealError::NoKey);
        }
        Ok(Self {
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// A new key line for key text: `<id>:<32 random bytes, base64>`.
    pub fn generate_key_line(id: &str) -> String {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the system's random source");
        format!("{id}:{}", STANDARD.encode(bytes))
    }

    /// The id of the key that seals.
    pub fn current_id(&self) -> &str {
        &self.keys[0].id
    }

    pub fn seal(&self, context: &str, plaintext: &[u8]) -> String {
        let current = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .expect("the system's random source");
        let mut in_out = plaintext.to_vec();
        current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut in_out,
            )
            .expect("AES-GCM sealing cannot fail for inputs this size");
        let mut body = Vec::with_capacity(NONCE_LEN + in_out.len());
        body.extend_from_slice(&nonce);
        body.extend_from_slice(&in_out);
        format!("{PREFIX}{}:{}", current.id, URL_SAFE_NO_PAD.encode(body))
    }

    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let rest = sealed.strip_prefix(PREFIX).ok_or(SealError::NotSealed)?;
        let (id, encoded) = rest.split_once(':').ok_or(SealError::NotSealed)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| SealError::UnknownKey(id.to_string()))?;
        let body = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| SealError::Corrupt)?;
        if body.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(SealError::Corrupt);
        }
        let (nonce, ciphertext) = body.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Corrupt)?;
        let mut in_out = ciphertext.to_vec();
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut in_out)
            .map_err(|_| SealError::Corrupt)?;
        Ok(plain.to_vec())
    }

    /// Whether `sealed` was sealed with the current key (else it should be sealed again).
    pub fn is_current(&self, sealed: &str) -> bool {
        sealed
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .is_some_and(|(id, _)| id == self.keys[0].id)
    }
}

/// Whether a stored value is sealed (a value from before sealing was turned on is not).
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(lines: &[&str]) -> Sealer {
        Sealer::parse(&lines.join("\n")).unwrap()
    }

    #[test]
    fn a_sealed_value_opens_only_with_its_context() {
        let line = Sealer::generate_key_line("k1");
        let s = sealer(&[&line]);
        let sealed = s.seal("totp:42", b"JBSWY3DPEHPK3PXP");
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("JBSWY3DPEHPK3PXP"));
        assert_eq!(s.open("totp:42", &sealed).unwrap(), b"JBSWY3DPEHPK3PXP");
        assert_eq!(s.open("totp:43", &sealed), Err(SealError::Corrupt));
        // Sealing twice gives different text (a fresh nonce each time).
        assert_ne!(s.seal("totp:42", b"x"), s.seal("totp:42", b"x"));
    }

    #[test]
    fn rotation_keeps_old_values_open_and_reports_them_stale() {
        let old = Sealer::generate_key_line("old");
        let new = Sealer::generate_key_line("new");
        let before = sealer(&[&old]);
        let sealed = before.seal("ca", b"key");
        let after = sealer(&[&new, &old]);
        assert_eq!(after.open("ca", &sealed).unwrap(), b"key");
        assert!(!after.is_current(&sealed));
        let resealed = after.seal("ca", b"key");
        assert!(after.is_current(&resealed));
        // Without the old line the old value no longer opens, and says why.
        let only_new = sealer(&[&new]);
        assert_eq!(
            only_new.open("ca", &sealed),
            Err(SealError::UnknownKey("old".into()))
        );
    }

    #[test]
    fn tampering_and_bad_key_text_are_errors() {
        let s = sealer(&[&Sealer::generate_key_line("k")]);
        let sealed = s.seal("c", b"secret");
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(s.open("c", &tampered), Err(SealError::Corrupt));
        assert_eq!(s.open("c", "plain"), Err(SealError::NotSealed));
        assert_eq!(s.open("c", "sealed:v1:k:%%%"), Err(SealError::Corrupt));
        assert_eq!(s.open("c", "sealed:v1:k:"), Err(SealError::Corrupt));
        assert!(matches!(Sealer::parse(""), Err(SealError::NoKey)));
        assert!(matches!(
            Sealer::parse("k:short"),
            Err(SealError::BadKeyLine(1))
        ));
        assert!(matches!(
            Sealer::parse("no-colon"),
            Err(SealError::BadKeyLine(1))
        ));
        let line = Sealer::generate_key_line("k");
        assert!(matches!(
            Sealer::parse(&format!("{line}\n{line}")),
            Err(SealError::DuplicateId(_))
        ));
    }
}
