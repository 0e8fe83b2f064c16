//! Signed inode versions as replicas receive them (`PutVersion`) and readers get them
//! (`Versions`), and the replica that stores them: never a panic; whatever verifies
//! encodes back to the same body, and a replica accepts it or refuses it cleanly.
//! Directories (decoded after decryption, so from writers holding the key) too.

#![no_main]

use std::cell::RefCell;

use fs::dir::Directory;
use fs::inode::{Inode, Signed};
use fs::{Replica, store::Store};
use keys::Revocations;
use libfuzzer_sys::fuzz_target;
use protocols::wire;

thread_local! {
    static REPLICA: RefCell<Replica> =
        RefCell::new(Replica::new(Store::in_memory().expect("an in-memory store opens")));
}

fuzz_target!(|data: &[u8]| {
    let none = Revocations::default();
    if let Ok(verified) = Signed::verify(data, u64::MAX / 2, &none) {
        let body = wire::encode(&*verified.inode).expect("a verified inode encodes");
        assert_eq!(wire::decode::<Inode>(&body).as_ref(), Ok(&*verified.inode));
        assert_eq!(verified.id, verified.inode.binding.id());
        REPLICA.with(|r| {
            let _ = r.borrow().put_version(&verified.id, data);
        });
    }
    if data.len() > 32 {
        let (id, rest) = data.split_at(32);
        let id = fs::InodeId(id.try_into().expect("32 bytes"));
        REPLICA.with(|r| {
            let _ = r.borrow().put_version(&id, rest);
        });
    }
    if let Ok(dir) = Directory::decode(data) {
        let bytes = dir.encode().expect("a decoded directory encodes");
        assert_eq!(Directory::decode(&bytes).as_ref(), Ok(&dir));
    }
});
