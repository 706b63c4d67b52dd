//! A DNS server over UDP on a free port that answers A queries for the names it is given,
//! the way a Kubernetes cluster's DNS answers for a headless Service: one name, one A
//! record per ready instance. Its records can be changed while it runs.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

/// Records are served with this TTL (seconds), as CoreDNS does for Services.
const TTL: u32 = 1;

type Records = Arc<Mutex<HashMap<Name, Vec<Ipv4Addr>>>>;

pub struct FakeDns {
    addr: SocketAddr,
    records: Records,
    task: tokio::task::JoinHandle<()>,
}

impl FakeDns {
    pub async fn start() -> std::io::Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let addr = socket.local_addr()?;
        let records = Records::default();
        let task = tokio::spawn(serve(socket, records.clone()));
        Ok(Self {
            addr,
            records,
            task,
        })
    }

    /// Where to send queries (a resolver's nameserver).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on `name` resolves to `addresses` (none: NXDOMAIN).
    pub fn set(&self, name: &str, addresses: &[Ipv4Addr]) {
        let name = Name::from_ascii(name)
            .expect("a valid DNS name")
            .to_lowercase();
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.insert(fully_qualified(name), addresses.to_vec());
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn fully_qualified(mut name: Name) -> Name {
    name.set_fqdn(true);
    name
}

async fn serve(socket: UdpSocket, records: Records) {
    let mut buffer = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        let Ok(query) = Message::from_vec(&buffer[..len]) else {
            continue;
        };
        let answer = answer(&query, &records);
        if let Ok(bytes) = answer.to_vec() {
            let _ = socket.send_to(&bytes, peer).await;
        }
    }
}

fn answer(query: &Message, records: &Records) -> Message {
    let mut response = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    let records = records.lock().unwrap_or_else(|e| e.into_inner());
    for question in &query.queries {
        response.add_query(question.clone());
        let name = fully_qualified(question.name().to_lowercase());
        match records.get(&name) {
            None => response.metadata.response_code = ResponseCode::NXDomain,
            Some(addresses) if addresses.is_empty() => {
                response.metadata.response_code = ResponseCode::NXDomain
            }
            // The name exists; only A records are served (an AAAA query gets none).
            Some(addresses) if question.query_type() == RecordType::A => {
                for address in addresses {
                    response.add_answer(Record::from_rdata(
                        question.name().clone(),
                        TTL,
                        RData::A(A(*address)),
                    ));
                }
            }
            Some(_) => {}
        }
    }
    response
}

/// Loopback addresses that stand for the pods behind one name: the instances of a
/// service started on them differ by address only, as pods behind a headless Service do.
pub const LOOPBACK_HOSTS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 1),
    Ipv4Addr::new(127, 0, 0, 2),
    Ipv4Addr::new(127, 0, 0, 3),
];

/// A port free on every address of [`LOOPBACK_HOSTS`].
pub fn port_free_on_every_loopback_host() -> u16 {
    loop {
        let first = std::net::TcpListener::bind((LOOPBACK_HOSTS[0], 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        if LOOPBACK_HOSTS[1..]
            .iter()
            .all(|host| std::net::TcpListener::bind((*host, port)).is_ok())
        {
            return port;
        }
    }
}
