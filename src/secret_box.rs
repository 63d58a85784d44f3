//! Encryption of credential secrets at rest.
//!
//! The origin stored `credential_data` as plain JSON despite a comment saying otherwise
//! (`reference/origin-behaviour.md`, section 9). Here every secret is sealed with
//! XChaCha20-Poly1305 under a master key that lives in a file outside the database, so a copy of
//! the database (a backup, a support bundle) does not leak receivers' tokens.
//!
//! - `XChaCha20` rather than `ChaCha20`: its 24-byte nonce is large enough to pick at random for
//!   every seal without tracking a counter, which a multi-process, multi-instance store could not
//!   do safely.
//! - Associated data binds a sealed secret to its row (credential uuid and organization, see
//!   [`credential_aad`]), so a ciphertext copied into another credential or organization fails
//!   to open instead of authenticating a different receiver.
//!
//! Sealed format: `nonce (24 bytes) || ciphertext || tag (16 bytes)`.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

/// Length of the master key in bytes.
pub const KEY_LEN: usize = 32;
/// Length of the random nonce that starts every sealed value.
pub const NONCE_LEN: usize = 24;
/// Length of the Poly1305 tag that ends every sealed value.
pub const TAG_LEN: usize = 16;

/// Errors of the master key and of sealing/opening secrets.
#[derive(Debug, thiserror::Error)]
pub enum SecretBoxError {
    /// The master key file could not be read, created or accepted (missing permissions, group-
    /// or world-accessible, wrong length or content). `reason` says what to do about it.
    #[error("master key file {}: {reason}", path.display())]
    KeyFile {
        /// The key file in question.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A sealed secret failed to open: it was corrupted or tampered with, sealed under another
    /// master key, or copied from another credential or organization (associated data differs).
    #[error(
        "cannot decrypt a stored secret: it is corrupted, was sealed under a different master \
         key, or belongs to another credential or organization"
    )]
    Decrypt,
    /// The operating system's random number generator failed while generating a key or a
    /// nonce. Nothing was written.
    #[error("the operating system's random number generator failed: {0}")]
    Random(#[source] getrandom::Error),
    /// The plaintext exceeds XChaCha20-Poly1305's message limit (about 256 GiB); no real secret
    /// gets here.
    #[error("secret too large to encrypt")]
    TooLarge,
}

/// The 32-byte key that seals credential secrets.
///
/// `Debug` prints no key material. The key bytes are held inside the cipher, which wipes them
/// on drop (`chacha20poly1305`'s `zeroize` feature).
pub struct MasterKey {
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Builds a key from raw bytes (for example from a secrets manager).
    #[must_use]
    pub fn from_bytes(mut bytes: [u8; KEY_LEN]) -> Self {
        let mut key = Key::from(bytes);
        let cipher = XChaCha20Poly1305::new(&key);
        wipe(&mut bytes);
        wipe(key.as_mut_slice());
        Self { cipher }
    }

    /// Generates a fresh random key.
    ///
    /// # Errors
    ///
    /// [`SecretBoxError::Random`] if the operating system's random number generator fails.
    pub fn generate() -> Result<Self, SecretBoxError> {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes).map_err(SecretBoxError::Random)?;
        Ok(Self::from_bytes(bytes))
    }

    /// Encrypts `plaintext`, binding it to `associated` (which is authenticated, not stored).
    /// Returns `nonce || ciphertext || tag`; every call uses a fresh random nonce, so sealing
    /// the same secret twice gives different bytes.
    ///
    /// # Errors
    ///
    /// [`SecretBoxError::Random`] if no random nonce can be drawn, [`SecretBoxError::TooLarge`]
    /// if `plaintext` exceeds the cipher's limit (about 256 GiB).
    pub fn seal(&self, plaintext: &[u8], associated: &[u8]) -> Result<Vec<u8>, SecretBoxError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(SecretBoxError::Random)?;
        let payload = Payload {
            msg: plaintext,
            aad: associated,
        };
        let ciphertext = self
            .cipher
            .encrypt(&XNonce::from(nonce), payload)
            .map_err(|_| SecretBoxError::TooLarge)?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// Decrypts a value produced by [`MasterKey::seal`] with the same `associated` data.
    ///
    /// # Errors
    ///
    /// [`SecretBoxError::Decrypt`] if `sealed` is too short, was modified, was sealed under
    /// another key, or was sealed with different associated data.
    pub fn open(&self, sealed: &[u8], associated: &[u8]) -> Result<Vec<u8>, SecretBoxError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(SecretBoxError::Decrypt);
        }
        let (nonce, ciphertext) = sealed
            .split_first_chunk::<NONCE_LEN>()
            .ok_or(SecretBoxError::Decrypt)?;
        let payload = Payload {
            msg: ciphertext,
            aad: associated,
        };
        self.cipher
            .decrypt(&XNonce::from(*nonce), payload)
            .map_err(|_| SecretBoxError::Decrypt)
    }
}

/// The associated data that binds a credential's sealed secret to its row.
///
/// Seal and open must use the same value, so build it here rather than at each call site. The
/// version prefix leaves room to change the layout later; the NUL separators keep
/// `("ab", 1)` and `("a", b1)`-style combinations distinct.
#[must_use]
pub fn credential_aad(credential_uuid: impl fmt::Display, organization_id: i64) -> Vec<u8> {
    format!("outbox-credential-v1\0{credential_uuid}\0{organization_id}").into_bytes()
}

/// Loads the master key from `path`, creating it if it does not exist.
///
/// File format: 64 lowercase or uppercase hex characters (the 32-byte key), optionally followed
/// by a newline; surrounding ASCII whitespace is ignored. Hex rather than raw bytes so that
/// operators can create, inspect and back up the file with ordinary tools
/// (`openssl rand -hex 32 > key && chmod 600 key`).
///
/// A new key is written to a temporary file in the same directory (created with
/// `create_new` and mode 0600, fsynced), then hard-linked to `path`, and the directory is
/// fsynced. The hard link never replaces an existing file, so two processes starting at once
/// cannot end up with different keys, and a crash never leaves a half-written key at `path`.
///
/// An existing file must be a regular file that grants no permission to group or others
/// (mode 0600 or 0400), like an SSH private key.
///
/// # Errors
///
/// [`SecretBoxError::KeyFile`], naming `path` and what to do, if the file cannot be read or
/// created, is accessible to group or others, or does not hold exactly 64 hex characters;
/// [`SecretBoxError::Random`] if a new key cannot be generated.
pub fn load_or_create(path: &Path) -> Result<MasterKey, SecretBoxError> {
    match File::open(path) {
        Ok(file) => read_key_file(path, file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_key_file(path),
        Err(e) => Err(key_file_error(
            path,
            format!("cannot open it ({e}); check that the service user may read it"),
        )),
    }
}

fn key_file_error(path: &Path, reason: impl Into<String>) -> SecretBoxError {
    SecretBoxError::KeyFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Hex characters of an encoded key.
const HEX_LEN: usize = KEY_LEN * 2;
/// Read at most this much, so a wrong path pointing at a huge file fails fast.
const MAX_FILE_LEN: u64 = 1024;

fn read_key_file(path: &Path, mut file: File) -> Result<MasterKey, SecretBoxError> {
    // Check the opened handle, not the path, so the file cannot be swapped in between.
    let meta = file
        .metadata()
        .map_err(|e| key_file_error(path, format!("cannot read its metadata ({e})")))?;
    if !meta.is_file() {
        return Err(key_file_error(
            path,
            "is not a regular file; point the key path at a file",
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(key_file_error(
            path,
            format!(
                "is accessible to group or others (mode {mode:04o}); the master key decrypts \
                 every stored credential, so run `chmod 600 {}`",
                path.display()
            ),
        ));
    }
    let mut contents = Vec::new();
    let read = Read::by_ref(&mut file)
        .take(MAX_FILE_LEN)
        .read_to_end(&mut contents)
        .map_err(|e| key_file_error(path, format!("cannot read it ({e})")));
    let decoded = read.and_then(|_| decode_key(path, &contents));
    wipe(&mut contents);
    let mut bytes = decoded?;
    let key = MasterKey::from_bytes(bytes);
    wipe(&mut bytes);
    Ok(key)
}

fn decode_key(path: &Path, contents: &[u8]) -> Result<[u8; KEY_LEN], SecretBoxError> {
    let hex = contents.trim_ascii();
    if hex.len() != HEX_LEN {
        return Err(key_file_error(
            path,
            format!(
                "holds {} bytes, expected {HEX_LEN} hex characters (a {KEY_LEN}-byte key); \
                 restore the right file, or move this one away to generate a new key (secrets \
                 sealed under the old key will no longer open)",
                hex.len()
            ),
        ));
    }
    let mut key = [0u8; KEY_LEN];
    let (pairs, _) = hex.as_chunks::<2>();
    for (byte, &[hi, lo]) in key.iter_mut().zip(pairs) {
        let (Some(hi), Some(lo)) = (hex_value(hi), hex_value(lo)) else {
            wipe(&mut key);
            return Err(key_file_error(
                path,
                format!(
                    "contains characters other than hex digits; expected {HEX_LEN} hex \
                     characters (e.g. from `openssl rand -hex 32`)"
                ),
            ));
        };
        *byte = (hi << 4) | lo;
    }
    Ok(key)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn encode_hex(bytes: &[u8]) -> Vec<u8> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2 + 1);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0x0f)]);
    }
    out
}

fn create_key_file(path: &Path) -> Result<MasterKey, SecretBoxError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let Some(name) = path.file_name() else {
        return Err(key_file_error(
            path,
            "does not name a file; give a file path for the master key",
        ));
    };

    let mut bytes = [0u8; KEY_LEN];
    getrandom::fill(&mut bytes).map_err(SecretBoxError::Random)?;
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(SecretBoxError::Random)?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(".tmp-");
    tmp_name.push(String::from_utf8_lossy(&encode_hex(&suffix)).as_ref());
    let tmp = dir.join(tmp_name);

    let mut contents = encode_hex(&bytes);
    contents.push(b'\n');
    let written = write_new_file(&tmp, &contents);
    wipe(&mut contents);
    if let Err(e) = written {
        wipe(&mut bytes);
        let _ = fs::remove_file(&tmp);
        return Err(key_file_error(
            path,
            format!(
                "does not exist and cannot be created ({e}); create the directory {} and let \
                 the service user write to it, or create the key yourself with \
                 `openssl rand -hex 32 > {} && chmod 600 {}`",
                dir.display(),
                path.display(),
                path.display()
            ),
        ));
    }

    // `hard_link` fails instead of replacing an existing `path`, unlike `rename`.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Another process created the key first; use theirs so both agree.
            wipe(&mut bytes);
            return match File::open(path) {
                Ok(file) => read_key_file(path, file),
                Err(e) => Err(key_file_error(path, format!("cannot open it ({e})"))),
            };
        }
        Err(e) => {
            wipe(&mut bytes);
            return Err(key_file_error(
                path,
                format!(
                    "cannot be created ({e}); create the key yourself with \
                     `openssl rand -hex 32 > {} && chmod 600 {}`",
                    path.display(),
                    path.display()
                ),
            ));
        }
    }
    // Without this the new directory entry may be lost on power failure while secrets sealed
    // under the key are already committed to the database.
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        wipe(&mut bytes);
        return Err(key_file_error(
            path,
            format!(
                "was created but its directory {} cannot be synced ({e})",
                dir.display()
            ),
        ));
    }
    let key = MasterKey::from_bytes(bytes);
    wipe(&mut bytes);
    Ok(key)
}

fn write_new_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Overwrites key material before it is freed. `black_box` stops the compiler from removing
/// the writes as dead stores; this is best effort (copies made by moves are not covered), which
/// is as far as one can go without `unsafe` or another crate.
fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    std::hint::black_box(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let mut suffix = [0u8; 8];
            getrandom::fill(&mut suffix).expect("random");
            let name = format!(
                "secret_box-{tag}-{}-{}",
                std::process::id(),
                String::from_utf8_lossy(&encode_hex(&suffix))
            );
            let dir = std::env::temp_dir().join(name);
            fs::create_dir(&dir).expect("create temp dir");
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn write_with_mode(path: &Path, contents: &[u8], mode: u32) {
        fs::write(path, contents).expect("write");
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    const HEX_KEY: &[u8] = b"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n";

    fn key() -> MasterKey {
        MasterKey::generate().expect("key")
    }

    #[test]
    fn round_trip() {
        let k = key();
        let aad = credential_aad("c0ffee", 7);
        let sealed = k.seal(b"s3cret-token", &aad).expect("seal");
        assert_eq!(sealed.len(), NONCE_LEN + b"s3cret-token".len() + TAG_LEN);
        assert_eq!(k.open(&sealed, &aad).expect("open"), b"s3cret-token");
    }

    #[test]
    fn round_trip_empty_plaintext() {
        let k = key();
        let sealed = k.seal(b"", b"aad").expect("seal");
        assert_eq!(k.open(&sealed, b"aad").expect("open"), b"");
    }

    #[test]
    fn sealing_twice_gives_different_bytes() {
        let k = key();
        assert_ne!(
            k.seal(b"same", b"aad").expect("seal"),
            k.seal(b"same", b"aad").expect("seal")
        );
    }

    #[test]
    fn every_tampered_byte_fails() {
        let k = key();
        let sealed = k.seal(b"s3cret-token", b"aad").expect("seal");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                matches!(k.open(&bad, b"aad"), Err(SecretBoxError::Decrypt)),
                "byte {i}"
            );
        }
    }

    #[test]
    fn truncated_or_extended_fails() {
        let k = key();
        let sealed = k.seal(b"s3cret-token", b"aad").expect("seal");
        for len in 0..sealed.len() {
            assert!(k.open(&sealed[..len], b"aad").is_err(), "len {len}");
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(k.open(&longer, b"aad").is_err());
    }

    #[test]
    fn wrong_associated_data_fails() {
        let k = key();
        let sealed = k.seal(b"tok", &credential_aad("uuid-a", 7)).expect("seal");
        for aad in [
            credential_aad("uuid-b", 7),
            credential_aad("uuid-a", 8),
            Vec::new(),
        ] {
            assert!(matches!(
                k.open(&sealed, &aad),
                Err(SecretBoxError::Decrypt)
            ));
        }
    }

    #[test]
    fn credential_aad_is_unambiguous() {
        assert_ne!(credential_aad("a1", 2), credential_aad("a", 12));
    }

    #[test]
    fn wrong_key_fails() {
        let sealed = key().seal(b"tok", b"aad").expect("seal");
        assert!(matches!(
            key().open(&sealed, b"aad"),
            Err(SecretBoxError::Decrypt)
        ));
    }

    #[test]
    fn sealed_bytes_do_not_contain_plaintext() {
        let k = key();
        let plaintext = b"Bearer abcdefghijklmnopqrstuvwxyz-0123456789";
        let sealed = k.seal(plaintext, b"aad").expect("seal");
        assert!(
            !sealed
                .windows(8)
                .any(|w| plaintext.windows(8).any(|p| p == w))
        );
    }

    #[test]
    fn debug_prints_no_key_material() {
        let k = MasterKey::from_bytes([0xAB; KEY_LEN]);
        let shown = format!("{k:?}");
        assert_eq!(shown, "MasterKey(..)");
        assert!(!shown.to_lowercase().contains("ab"));
    }

    #[test]
    fn creates_key_file_with_mode_0600_and_reloads_it() {
        let dir = TempDir::new("create");
        let path = dir.0.join("master.key");
        let first = load_or_create(&path).expect("create");
        let meta = fs::metadata(&path).expect("metadata");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let contents = fs::read(&path).expect("read");
        assert_eq!(contents.len(), HEX_LEN + 1);
        assert!(contents[..HEX_LEN].iter().all(u8::is_ascii_hexdigit));
        // Only the key file is left behind, no temporary.
        assert_eq!(fs::read_dir(&dir.0).expect("ls").count(), 1);

        let sealed = first.seal(b"tok", b"aad").expect("seal");
        let second = load_or_create(&path).expect("reload");
        assert_eq!(second.open(&sealed, b"aad").expect("open"), b"tok");
    }

    #[test]
    fn loads_known_hex_key() {
        let dir = TempDir::new("known");
        let path = dir.0.join("k");
        write_with_mode(&path, HEX_KEY, 0o600);
        let loaded = load_or_create(&path).expect("load");
        let mut bytes = [0u8; KEY_LEN];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::try_from(i).expect("small");
        }
        let sealed = MasterKey::from_bytes(bytes).seal(b"x", b"").expect("seal");
        assert_eq!(loaded.open(&sealed, b"").expect("open"), b"x");
        // Uppercase and no trailing newline are accepted too; 0400 is fine.
        write_with_mode(
            &path,
            HEX_KEY.trim_ascii().to_ascii_uppercase().as_slice(),
            0o400,
        );
        let upper = load_or_create(&path).expect("load upper");
        assert_eq!(upper.open(&sealed, b"").expect("open"), b"x");
    }

    #[test]
    fn refuses_group_or_world_accessible_key_file() {
        let dir = TempDir::new("mode");
        let path = dir.0.join("k");
        for mode in [0o644, 0o640, 0o604, 0o660, 0o620] {
            write_with_mode(&path, HEX_KEY, mode);
            let err = load_or_create(&path).expect_err("must refuse");
            let msg = err.to_string();
            assert!(matches!(err, SecretBoxError::KeyFile { .. }));
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("chmod 600"), "{msg}");
            assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
        }
        // The refused file is left untouched.
        assert_eq!(fs::read(&path).expect("read"), HEX_KEY);
    }

    #[test]
    fn refuses_wrong_length_and_non_hex() {
        let dir = TempDir::new("len");
        let path = dir.0.join("k");
        let non_hex = [b'g'; HEX_LEN];
        let raw = [7u8; KEY_LEN];
        for contents in [
            &b""[..],
            &HEX_KEY[..HEX_LEN - 2],
            b"00000000000000000000000000000000000000000000000000000000000000000000",
            &raw,
            &non_hex,
        ] {
            write_with_mode(&path, contents, 0o600);
            let err = load_or_create(&path).expect_err("must refuse");
            let msg = err.to_string();
            assert!(matches!(err, SecretBoxError::KeyFile { .. }), "{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("64 hex characters"), "{msg}");
        }
    }

    #[test]
    fn refuses_directory_and_missing_parent() {
        let dir = TempDir::new("dir");
        fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o700)).expect("chmod");
        assert!(matches!(
            load_or_create(&dir.0),
            Err(SecretBoxError::KeyFile { .. })
        ));
        let missing = dir.0.join("no-such-dir").join("k");
        let msg = load_or_create(&missing).expect_err("refuse").to_string();
        assert!(msg.contains(&missing.display().to_string()), "{msg}");
        assert!(msg.contains("openssl rand -hex 32"), "{msg}");
    }

    #[test]
    fn error_messages_name_when_they_happen() {
        assert!(SecretBoxError::Decrypt.to_string().contains("master key"));
    }
}
