//! A datastore on an NFSv3 export, spoken by the agent itself with the `nfs3_client` crate:
//! no kernel mount (this machine kind has no NFS client in its kernel, and a hung kernel
//! mount would hang the agent), no root needed for it.
//!
//! One TCP connection per datastore, opened on first use and dropped after any error or
//! timeout (the next operation reconnects), so a server that restarts or a path that was
//! blocked is picked up again by itself. Writes are `FILE_SYNC`. A record is written to a
//! temporary file and RENAMEd over its name; a claim is written to a temporary file and
//! LINKed to its name, which the server refuses with `NFS3ERR_EXIST` when it exists.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use nfs3_client::nfs3_types::nfs3::{
    CREATE3args, LINK3args, LOOKUP3args, MKDIR3args, Nfs3Result, READ3args, READDIR3args, REMOVE3args, RENAME3args,
    WRITE3args, cookieverf3, createhow3, diropargs3, filename3, nfs_fh3, nfsstat3, sattr3, stable_how,
};
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::{Nfs3Client, Nfs3ConnectionBuilder};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::{MAX_FILE, StoreError};

/// Largest single READ or WRITE.
const CHUNK: usize = 32 * 1024;

static TEMP: AtomicU64 = AtomicU64::new(0);

/// Where an NFSv3 export is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsTarget {
    /// The server's address.
    pub server: IpAddr,
    /// The export's path on the server (`/export/ds1`).
    pub export: String,
    /// The MOUNT service's port (`None`: ask the portmapper on 111).
    pub mount_port: Option<u16>,
    /// The NFS service's port (`None`: ask the portmapper on 111).
    pub nfs_port: Option<u16>,
}

/// A TCP connection as `nfs3_client` reads and writes it, with one difference from its own
/// `TokioIo`: a read that returns no bytes (the server closed the connection) or a write that
/// takes none is an error. `nfs3_client` 0.9's `read_exact` loops on a read until its buffer
/// is full, so a server that dies with a reply outstanding made it spin on the closed socket
/// — on the liveness thread, at real-time priority, for the whole datastore timeout: every
/// agent of the lab froze its machine for 2 s when the NFS server was stopped (issue 20).
struct EofIo(TcpStream);

impl nfs3_client::io::AsyncRead for EofIo {
    async fn async_read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match tokio::io::AsyncReadExt::read(&mut self.0, buf).await? {
            0 if !buf.is_empty() => {
                Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the NFS server closed the connection"))
            }
            n => Ok(n),
        }
    }
}

impl nfs3_client::io::AsyncWrite for EofIo {
    async fn async_write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match tokio::io::AsyncWriteExt::write(&mut self.0, buf).await? {
            0 if !buf.is_empty() => {
                Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "the NFS server takes no more bytes"))
            }
            n => Ok(n),
        }
    }
}

/// Connects [`EofIo`]s.
struct EofConnector;

impl nfs3_client::net::Connector for EofConnector {
    type Connection = EofIo;

    async fn connect(&self, addr: std::net::SocketAddr) -> std::io::Result<EofIo> {
        Ok(EofIo(TcpStream::connect(addr).await?))
    }

    async fn connect_with_port(&self, addr: std::net::SocketAddr, local_port: u16) -> std::io::Result<EofIo> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(std::net::SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), local_port))?;
        Ok(EofIo(socket.connect(addr).await?))
    }
}

struct Connection {
    client: Nfs3Client<EofIo>,
    root: nfs_fh3,
    dirs: BTreeMap<String, nfs_fh3>,
}

/// The NFS store.
pub struct NfsStore {
    target: NfsTarget,
    base: String,
    conn: Mutex<Option<Connection>>,
}

fn status<T, E>(result: Nfs3Result<T, E>) -> Result<T, StoreError> {
    match result {
        Nfs3Result::Ok(ok) => Ok(ok),
        Nfs3Result::Err((nfsstat3::NFS3ERR_NOENT, _)) => Err(StoreError::NotFound),
        Nfs3Result::Err((nfsstat3::NFS3ERR_EXIST, _)) => Err(StoreError::Exists),
        Nfs3Result::Err((status, _)) => Err(StoreError::Other(status.to_string())),
    }
}

fn rpc<E: std::fmt::Debug>(error: E) -> StoreError {
    StoreError::Transport(format!("{error:?}"))
}

fn name(n: &str) -> filename3<'static> {
    filename3::from(n.as_bytes().to_vec())
}

fn split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((dir, file)) => (dir, file),
        None => ("", path),
    }
}

fn temp_name(file: &str) -> String {
    format!(".{file}.tmp-{}-{}", std::process::id(), TEMP.fetch_add(1, Ordering::Relaxed))
}

/// Runs an operation on the store's connection, connecting first when there is none. A
/// connection that was idle may have died with a server restart: when the operation fails at
/// the transport level, it runs once more on a new connection (every operation here is safe
/// to repeat: a repeated claim finds its own claim, which the core recognises as won). After
/// any other failure the connection is dropped, so the next operation starts clean.
macro_rules! on_connection {
    ($store:ident, |$c:ident, $base:ident| $op:expr) => {{
        let mut guard = $store.conn.lock().await;
        let reused = guard.is_some();
        if guard.is_none() {
            *guard = Some($store.connect().await?);
        }
        let mut result = match guard.as_mut() {
            Some($c) => {
                let $base = $store.base.as_str();
                $op.await
            }
            None => Err(StoreError::Other("no connection".into())),
        };
        if reused && matches!(result, Err(StoreError::Transport(_))) {
            *guard = Some($store.connect().await?);
            if let Some($c) = guard.as_mut() {
                let $base = $store.base.as_str();
                result = $op.await;
            }
        }
        if matches!(result, Err(StoreError::Other(_) | StoreError::Transport(_))) {
            *guard = None;
        }
        result
    }};
}

impl NfsStore {
    /// A store for `target`, rooted at `base` inside the export.
    pub fn new(target: NfsTarget, base: String) -> Self {
        Self { target, base, conn: Mutex::new(None) }
    }

    pub(crate) async fn reset(&self) {
        *self.conn.lock().await = None;
    }

    async fn connect(&self) -> Result<Connection, StoreError> {
        let credential = opaque_auth::auth_unix(&auth_unix {
            stamp: std::process::id(),
            machinename: Opaque::owned(b"halo".to_vec()),
            uid: 0,
            gid: 0,
            gids: vec![],
        });
        let mut builder = Nfs3ConnectionBuilder::new(EofConnector, self.target.server.to_string(), &self.target.export)
            .connect_from_privileged_port(false)
            .credential(credential);
        if let Some(port) = self.target.mount_port {
            builder = builder.mount_port(port);
        }
        if let Some(port) = self.target.nfs_port {
            builder = builder.nfs3_port(port);
        }
        let connection = builder.mount().await.map_err(|e| {
            StoreError::Other(format!("cannot mount {}:{}: {e:?}", self.target.server, self.target.export))
        })?;
        let root = connection.root_nfs_fh3();
        Ok(Connection { client: connection.into_nfs3_client(), root, dirs: BTreeMap::new() })
    }

    pub(crate) async fn ensure_dir(&self, dir: &str) -> Result<(), StoreError> {
        on_connection!(self, |c, base| async { dir_fh(c, base, dir, true).await.map(drop) })
    }

    pub(crate) async fn write_atomic(&self, path: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        on_connection!(self, |c, base| write_atomic_on(c, base, path, &bytes))
    }

    pub(crate) async fn create_new(&self, path: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        on_connection!(self, |c, base| create_new_on(c, base, path, &bytes))
    }

    pub(crate) async fn read(&self, path: &str) -> Result<Vec<u8>, StoreError> {
        on_connection!(self, |c, base| read_on(c, base, path))
    }

    pub(crate) async fn list(&self, dir: &str) -> Result<Vec<String>, StoreError> {
        on_connection!(self, |c, base| list_on(c, base, dir))
    }

    pub(crate) async fn remove(&self, path: &str) -> Result<(), StoreError> {
        on_connection!(self, |c, base| remove_on(c, base, path))
    }
}

async fn write_atomic_on(c: &mut Connection, base: &str, path: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let (dir, file) = split(path);
    let dir_fh = dir_fh(c, base, dir, false).await?;
    let temp = temp_name(file);
    let renamed = match write_new(c, &dir_fh, &temp, bytes).await {
        Ok(_) => status(
            c.client
                .rename(&RENAME3args {
                    from: diropargs3 { dir: dir_fh.clone(), name: name(&temp) },
                    to: diropargs3 { dir: dir_fh.clone(), name: name(file) },
                })
                .await
                .map_err(rpc)?,
        )
        .map(drop),
        Err(e) => Err(e),
    };
    if renamed.is_err() {
        let _ = c.client.remove(&REMOVE3args { object: diropargs3 { dir: dir_fh, name: name(&temp) } }).await;
    }
    renamed
}

async fn create_new_on(c: &mut Connection, base: &str, path: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let (dir, file) = split(path);
    let dir_fh = dir_fh(c, base, dir, false).await?;
    let temp = temp_name(file);
    let linked = match write_new(c, &dir_fh, &temp, bytes).await {
        Ok(temp_fh) => status(
            c.client
                .link(&LINK3args { file: temp_fh, link: diropargs3 { dir: dir_fh.clone(), name: name(file) } })
                .await
                .map_err(rpc)?,
        )
        .map(drop),
        Err(e) => Err(e),
    };
    let _ = c.client.remove(&REMOVE3args { object: diropargs3 { dir: dir_fh, name: name(&temp) } }).await;
    linked
}

async fn read_on(c: &mut Connection, base: &str, path: &str) -> Result<Vec<u8>, StoreError> {
    let (dir, file) = split(path);
    let dir_fh = dir_fh(c, base, dir, false).await?;
    let fh = lookup(c, &dir_fh, file).await?;
    let mut bytes = Vec::new();
    loop {
        let ok = status(
            c.client
                .read(&READ3args { file: fh.clone(), offset: bytes.len() as u64, count: CHUNK as u32 })
                .await
                .map_err(rpc)?,
        )?;
        bytes.extend_from_slice(ok.data.as_ref());
        if bytes.len() > MAX_FILE {
            return Err(StoreError::Other(format!("{path} is larger than {MAX_FILE} bytes")));
        }
        if ok.eof || ok.count == 0 {
            return Ok(bytes);
        }
    }
}

async fn list_on(c: &mut Connection, base: &str, dir: &str) -> Result<Vec<String>, StoreError> {
    let fh = dir_fh(c, base, dir, false).await?;
    let mut names = Vec::new();
    let (mut cookie, mut verifier) = (0, cookieverf3::default());
    for _ in 0..10_000 {
        let ok = status(
            c.client
                .readdir(&READDIR3args { dir: fh.clone(), cookie, cookieverf: verifier, count: 64 * 1024 })
                .await
                .map_err(rpc)?,
        )?;
        verifier = ok.cookieverf;
        for entry in &ok.reply.entries.0 {
            let n = String::from_utf8_lossy(entry.name.0.as_ref()).into_owned();
            cookie = entry.cookie;
            if !n.starts_with('.') {
                names.push(n);
            }
        }
        if ok.reply.eof || ok.reply.entries.0.is_empty() {
            names.sort();
            return Ok(names);
        }
    }
    Err(StoreError::Other(format!("directory {dir} does not end")))
}

async fn remove_on(c: &mut Connection, base: &str, path: &str) -> Result<(), StoreError> {
    let (dir, file) = split(path);
    let dir_fh = dir_fh(c, base, dir, false).await?;
    status(c.client.remove(&REMOVE3args { object: diropargs3 { dir: dir_fh, name: name(file) } }).await.map_err(rpc)?)
        .map(drop)
}

async fn lookup(c: &mut Connection, dir: &nfs_fh3, file: &str) -> Result<nfs_fh3, StoreError> {
    let ok = status(
        c.client.lookup(&LOOKUP3args { what: diropargs3 { dir: dir.clone(), name: name(file) } }).await.map_err(rpc)?,
    )?;
    Ok(ok.object)
}

/// The handle of `base/dir`, creating missing directories when `create`.
async fn dir_fh(c: &mut Connection, base: &str, dir: &str, create: bool) -> Result<nfs_fh3, StoreError> {
    let full = if dir.is_empty() { base.to_string() } else { format!("{base}/{dir}") };
    if let Some(fh) = c.dirs.get(&full) {
        return Ok(fh.clone());
    }
    let mut fh = c.root.clone();
    for part in full.split('/').filter(|p| !p.is_empty()) {
        fh = match lookup(c, &fh, part).await {
            Ok(child) => child,
            Err(StoreError::NotFound) if create => {
                let made = c
                    .client
                    .mkdir(&MKDIR3args {
                        where_: diropargs3 { dir: fh.clone(), name: name(part) },
                        attributes: sattr3 {
                            mode: nfs3_client::nfs3_types::nfs3::Nfs3Option::Some(0o700),
                            ..sattr3::default()
                        },
                    })
                    .await
                    .map_err(rpc)?;
                match status(made) {
                    Ok(ok) => match ok.obj {
                        nfs3_client::nfs3_types::nfs3::Nfs3Option::Some(child) => child,
                        nfs3_client::nfs3_types::nfs3::Nfs3Option::None => lookup(c, &fh, part).await?,
                    },
                    Err(StoreError::Exists) => lookup(c, &fh, part).await?, // made meanwhile by another host
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
    }
    c.dirs.insert(full, fh.clone());
    Ok(fh)
}

/// Creates `file` in `dir` (it must not exist), writes `bytes` with FILE_SYNC, returns its handle.
async fn write_new(c: &mut Connection, dir: &nfs_fh3, file: &str, bytes: &[u8]) -> Result<nfs_fh3, StoreError> {
    let created = status(
        c.client
            .create(&CREATE3args {
                where_: diropargs3 { dir: dir.clone(), name: name(file) },
                how: createhow3::GUARDED(sattr3 {
                    mode: nfs3_client::nfs3_types::nfs3::Nfs3Option::Some(0o600),
                    ..sattr3::default()
                }),
            })
            .await
            .map_err(rpc)?,
    )?;
    let fh = match created.obj {
        nfs3_client::nfs3_types::nfs3::Nfs3Option::Some(fh) => fh,
        nfs3_client::nfs3_types::nfs3::Nfs3Option::None => lookup(c, dir, file).await?,
    };
    let mut offset = 0;
    while offset < bytes.len() {
        let end = (offset + CHUNK).min(bytes.len());
        let ok = status(
            c.client
                .write(&WRITE3args {
                    file: fh.clone(),
                    offset: offset as u64,
                    count: (end - offset) as u32,
                    stable: stable_how::FILE_SYNC,
                    data: Opaque::borrowed(&bytes[offset..end]),
                })
                .await
                .map_err(rpc)?,
        )?;
        if ok.count == 0 {
            return Err(StoreError::Other("the server accepted no bytes".into()));
        }
        offset += ok.count as usize;
    }
    Ok(fh)
}

#[cfg(test)]
mod tests {
    use nfs3_client::io::{AsyncRead as _, AsyncWrite as _};
    use nfs3_client::net::Connector as _;

    use super::*;

    #[test]
    fn a_closed_connection_is_an_error_not_a_spin() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("listener");
            let address = listener.local_addr().expect("address");
            // The "server" accepts, sends half a reply and closes.
            let server = tokio::spawn(async move {
                let (mut stream, _) = listener.accept().await.expect("accept");
                tokio::io::AsyncWriteExt::write_all(&mut stream, &[0x80, 0, 0]).await.expect("write");
            });
            let mut io = EofConnector.connect(address).await.expect("connect");
            server.await.expect("server");
            io.async_write_all(b"call").await.expect("the call is sent");
            let mut reply = [0u8; 8];
            // `nfs3_client`'s own read_exact, as it reads a reply: an error at once, where
            // its plain tokio adapter spins on the closed socket.
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), io.async_read_exact(&mut reply)).await;
            let error = read.expect("no spin until the timeout").expect_err("the connection closed");
            assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
        });
    }
}
