//! What goes into the shared store, sealed. Keys carry only keyed hashes; values are
//! encrypted with AES-256-GCM under a key derived from the flight's secret (the old
//! refresh token, or the user's key) and the configured store secret. A dump of the
//! store (or `MONITOR`) shows no token, refresh token, API key or user id; reading a
//! value back needs both the store secret and what the flight was about.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

use crate::token::Pair;

/// The keys of one flight.
pub struct FlightKeys {
    /// Hex of a keyed hash: what the store's keys are named by.
    pub id: String,
    seal: LessSafeKey,
}

fn derive(secret: &[u8], label: &str, kind: &str, input: &str) -> hmac::Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    for part in [label, kind, input] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    ctx.sign()
}

impl FlightKeys {
    /// `None` only if AES-256-GCM refused a 32-byte key (it accepts every one).
    pub fn new(secret: &[u8], kind: &str, input: &str) -> Option<FlightKeys> {
        let id = derive(secret, "id", kind, input);
        let id: String = id.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let enc = derive(secret, "seal", kind, input);
        // A 32-byte HMAC-SHA256 tag is exactly an AES-256 key.
        let seal = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, enc.as_ref()).ok()?);
        Some(FlightKeys { id, seal })
    }

    /// `nonce || ciphertext+tag` of the pair; the key id is the associated data, so a
    /// value cannot be moved to another flight's key.
    pub fn seal(&self, pair: &Pair) -> Option<Vec<u8>> {
        let mut plain = Vec::with_capacity(pair.access_token.len() + pair.refresh_token.len() + 8);
        for part in [&pair.access_token, &pair.refresh_token] {
            plain.extend_from_slice(&(part.len() as u32).to_be_bytes());
            plain.extend_from_slice(part.as_bytes());
        }
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).ok()?;
        self.seal
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.id.as_bytes()),
                &mut plain,
            )
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&plain);
        Some(out)
    }

    /// The pair back, or `None` when the value was not sealed for this flight (or was
    /// tampered with, or is too large to be ours).
    pub fn open(&self, value: &[u8], max_bytes: usize) -> Option<Pair> {
        if value.len() <= NONCE_LEN || value.len() > max_bytes {
            return None;
        }
        let (nonce, sealed) = value.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = self
            .seal
            .open_in_place(nonce, Aad::from(self.id.as_bytes()), &mut buf)
            .ok()?;
        let mut rest: &[u8] = plain;
        let mut take = || -> Option<String> {
            let (len, tail) = rest.split_first_chunk::<4>()?;
            let len = u32::from_be_bytes(*len) as usize;
            let (s, tail) = (tail.get(..len)?, tail.get(len..)?);
            rest = tail;
            String::from_utf8(s.to_vec()).ok()
        };
        let access_token = take()?;
        let refresh_token = take()?;
        Some(Pair {
            access_token,
            refresh_token,
        })
    }
}
