//! Credentials at rest: `credential_data` sealed under the master key before it reaches the
//! store, opened again only to build one attempt's header. Secrets are write-only: nothing
//! here returns them to a caller other than the sender.

use std::sync::Arc;

use serde_json::Value;
use time::OffsetDateTime;

use crate::credential::Credential;
use crate::delivery::StoredCredential;
use crate::engine::CredentialSource;
use crate::error::{Error, Result};
use crate::secret_box::{MasterKey, credential_aad};
use crate::store::Store;

/// Sealed credentials over a store.
pub struct Vault {
    store: Arc<dyn Store>,
    key: MasterKey,
}

impl Vault {
    pub fn new(store: Arc<dyn Store>, key: MasterKey) -> Vault {
        Vault { store, key }
    }

    /// Creates or rotates a credential; returns whether it was created. A rotation takes
    /// effect on the next attempt, since credentials are resolved per attempt.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the type or data is wrong (nothing is written);
    /// [`Error::Conflict`] when the uuid belongs to another organization; a database error.
    pub fn put(
        &self,
        credential_uuid: &str,
        organization_id: i64,
        credential_type: &str,
        data: &Value,
        now: OffsetDateTime,
    ) -> Result<bool> {
        if credential_uuid.is_empty() || credential_uuid.len() > 200 {
            return Err(Error::Invalid(
                "credential_uuid must be 1 to 200 characters".into(),
            ));
        }
        let credential = Credential::parse(credential_type, data).map_err(Error::Invalid)?;
        let plaintext = serde_json::to_vec(&credential.data)
            .map_err(|e| Error::Invalid(format!("credential_data: {e}")))?;
        let sealed_data = self
            .key
            .seal(
                &plaintext,
                &credential_aad(credential_uuid, organization_id),
            )
            .map_err(|e| Error::Config(e.to_string()))?;
        self.store.put_credential(&StoredCredential {
            credential_uuid: credential_uuid.to_string(),
            organization_id,
            credential_type: credential.credential_type.as_str().to_string(),
            sealed_data,
            created_at: now,
            updated_at: now,
        })
    }

    /// Deletes a credential; returns whether it existed.
    ///
    /// # Errors
    /// A database error.
    pub fn delete(&self, credential_uuid: &str, organization_id: i64) -> Result<bool> {
        self.store
            .delete_credential(credential_uuid, organization_id)
    }

    /// Opens a stored credential.
    ///
    /// # Errors
    /// A database error, or [`Error::Invalid`] when the sealed data does not open under this
    /// key (another key file, or a row copied from another credential).
    pub fn resolve(
        &self,
        credential_uuid: &str,
        organization_id: i64,
    ) -> Result<Option<Credential>> {
        let Some(stored) = self
            .store
            .get_credential(credential_uuid, organization_id)?
        else {
            return Ok(None);
        };
        let plaintext = self
            .key
            .open(
                &stored.sealed_data,
                &credential_aad(credential_uuid, organization_id),
            )
            .map_err(|_| {
                Error::Invalid(format!(
                    "credential {credential_uuid} does not decrypt with this master key \
                     (was OUTBOX_KEY_FILE changed?)"
                ))
            })?;
        let data: Value = serde_json::from_slice(&plaintext)
            .map_err(|e| Error::Invalid(format!("credential {credential_uuid}: {e}")))?;
        Credential::parse(&stored.credential_type, &data)
            .map(Some)
            .map_err(Error::Invalid)
    }
}

impl CredentialSource for Vault {
    fn auth_header(
        &self,
        credential_uuid: &str,
        organization_id: i64,
    ) -> std::result::Result<(String, String), String> {
        match self.resolve(credential_uuid, organization_id) {
            Ok(Some(credential)) => Ok(credential.auth_header()),
            Ok(None) => Err(format!(
                "credential {credential_uuid} not found in organization {organization_id}: \
                 not sent without it"
            )),
            Err(e) => Err(format!("credential {credential_uuid} unavailable: {e}")),
        }
    }
}
