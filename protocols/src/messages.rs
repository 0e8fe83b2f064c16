//! [`Message`] implementations for the credentials of the `keys` crate.

use keys::limits::{
    MAX_CHAIN_BYTES, MAX_CHAIN_LEN, MAX_IDENTITY_BYTES, MAX_PATH_BYTES, MAX_PRINCIPAL_BYTES,
    MAX_READCAP_BYTES, MAX_REVOCATION_LIST_BYTES, MAX_REVOCATIONS, MAX_WRITECAP_BYTES,
};
use keys::{Chain, Path, Principal, PublicIdentity, Readcap, RevocationList, Writecap};

use crate::wire::Message;

impl Message for Principal {
    const NAME: &'static str = "principal";
    const VERSION: u16 = 1;
    const MAX_BYTES: usize = MAX_PRINCIPAL_BYTES;
}

impl Message for Path {
    const NAME: &'static str = "path";
    const VERSION: u16 = 1;
    const MAX_BYTES: usize = MAX_PATH_BYTES;
}

impl Message for Writecap {
    const NAME: &'static str = "writecap";
    const VERSION: u16 = 1;
    const MAX_BYTES: usize = MAX_WRITECAP_BYTES;
}

impl Message for Chain {
    const NAME: &'static str = "writecap chain";
    const VERSION: u16 = 1;
    const MAX_BYTES: usize = MAX_CHAIN_BYTES;

    fn validate(&self) -> Result<(), String> {
        match self.links().len() {
            0 => Err("empty chain".into()),
            n if n > MAX_CHAIN_LEN => Err(format!("{n} links, at most {MAX_CHAIN_LEN}")),
            _ => Ok(()),
        }
    }
}

impl Message for RevocationList {
    const NAME: &'static str = "revocation list";
    const VERSION: u16 = 1;
    const MAX_BYTES: usize = MAX_REVOCATION_LIST_BYTES;

    fn validate(&self) -> Result<(), String> {
        match self.len() {
            n if n > MAX_REVOCATIONS => Err(format!("{n} entries, at most {MAX_REVOCATIONS}")),
            _ => Ok(()),
        }
    }
}

impl Message for Readcap {
    const NAME: &'static str = "readcap";
    const VERSION: u16 = 1;
    const MAX_BYTES: usize = MAX_READCAP_BYTES;
}

impl Message for PublicIdentity {
    const NAME: &'static str = "public identity";
    const VERSION: u16 = 1;
    const MAX_BYTES: usize = MAX_IDENTITY_BYTES;
}
