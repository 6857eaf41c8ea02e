//! What the DNS server answers, as a pure function of the registry's catalog.
//!
//! Names (case-insensitive, in the zone `service.stratus.`):
//!
//! - `<service>.service.stratus`: `A`/`AAAA` for every instance's address, `SRV` for every
//!   instance (priority 1, weight 1, its port, target `<id>.<service>.service.stratus`, whose
//!   address goes in the additional section).
//! - `<id>.<service>.service.stratus`: that one instance.
//! - `_<service>._tcp.service.stratus`: the RFC 2782 spelling, for clients that build SRV names
//!   themselves; the same records as `<service>.service.stratus`.
//!
//! - `api.stratus` (the gateway's name, configurable): `A`/`AAAA` for every instance of the
//!   `gateway` service, so clients find the front door by name and get DNS round robin across
//!   the gateway instances.
//!
//! Every record has TTL 0: the registry is the truth and changes by the second, so resolvers must
//! not cache an instance that may already be gone. An unknown service is NXDOMAIN; a name outside
//! the zone is REFUSED (this is not a recursive resolver).

use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use stratus_kit::model::{Catalog, Instance};

pub const ZONE: &str = "service.stratus";
/// The name clients use for the API: answered with the gateway's instances.
pub const DEFAULT_GATEWAY_NAME: &str = "api.stratus";
/// Records change whenever the registry does: never cache.
pub const TTL: u32 = 0;

#[derive(Debug, Default)]
pub struct Answer {
    pub code: ResponseCode,
    pub answers: Vec<Record>,
    pub additionals: Vec<Record>,
}

impl Answer {
    fn code(code: ResponseCode) -> Self {
        Answer {
            code,
            ..Answer::default()
        }
    }
}

/// Answers one question from `catalog`, with the gateway's name `api.stratus`.
pub fn lookup(catalog: &Catalog, name: &Name, kind: RecordType) -> Answer {
    lookup_with(catalog, name, kind, DEFAULT_GATEWAY_NAME)
}

/// Answers one question from `catalog`; `gateway_name` resolves to the gateway's instances.
pub fn lookup_with(catalog: &Catalog, name: &Name, kind: RecordType, gateway_name: &str) -> Answer {
    let text = name.to_lowercase().to_ascii();
    let text = text.trim_end_matches('.');
    let (id, service) = if text == gateway_name.trim_end_matches('.') {
        (None, "gateway")
    } else {
        let Some(head) = text.strip_suffix(ZONE).and_then(|h| h.strip_suffix('.')) else {
            return Answer::code(ResponseCode::Refused);
        };
        // `<service>` or `<id>.<service>`: the service is the last label, the id anything before.
        match head.strip_suffix("._tcp").and_then(|h| h.strip_prefix('_')) {
            Some(service) => (None, service),
            None => match head.rsplit_once('.') {
                Some((id, service)) => (Some(id), service),
                None => (None, head),
            },
        }
    };
    let Some(instances) = catalog.services.get(service) else {
        return Answer::code(ResponseCode::NXDomain);
    };
    let chosen: Vec<&Instance> = instances
        .iter()
        .filter(|i| id.is_none_or(|id| i.id.eq_ignore_ascii_case(id)))
        .collect();
    if chosen.is_empty() {
        return Answer::code(ResponseCode::NXDomain);
    }

    let mut answer = Answer::code(ResponseCode::NoError);
    for instance in chosen {
        let wants_address = matches!(kind, RecordType::A | RecordType::AAAA | RecordType::ANY);
        if wants_address {
            answer.answers.extend(address_record(name, instance, kind));
        }
        if matches!(kind, RecordType::SRV | RecordType::ANY) {
            let Some(target) = target(instance) else {
                continue;
            };
            let srv = SRV::new(1, 1, instance.port, target.clone());
            answer
                .answers
                .push(Record::from_rdata(name.clone(), TTL, RData::SRV(srv)));
            answer
                .additionals
                .extend(address_record(&target, instance, RecordType::ANY));
        }
    }
    answer
}

/// `<id>.<service>.service.stratus.`, or `None` if the id is not a valid DNS label.
fn target(instance: &Instance) -> Option<Name> {
    Name::from_ascii(format!(
        "{}.{}.{ZONE}.",
        instance.id.to_ascii_lowercase(),
        instance.service
    ))
    .ok()
}

/// The instance's address as an `A` or `AAAA` record, if it is an IP address of a kind `kind`
/// asks for. (Instances registered by host name have no address record here.)
fn address_record(name: &Name, instance: &Instance, kind: RecordType) -> Option<Record> {
    let address: IpAddr = instance
        .address
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    let data = match (address, kind) {
        (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(v4)),
        (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(v6)),
        _ => return None,
    };
    Some(Record::from_rdata(name.clone(), TTL, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stratus_kit::model::Health;

    fn instance(service: &str, id: &str, address: &str, port: u16) -> Instance {
        Instance {
            id: id.into(),
            service: service.into(),
            address: address.into(),
            port,
            version: "1".into(),
            metadata: Default::default(),
            health: Health::Passing,
            ttl_seconds: 3.0,
            registered_at: String::new(),
        }
    }

    fn catalog() -> Catalog {
        let mut catalog = Catalog::default();
        catalog.services.insert(
            "catalog".into(),
            vec![
                instance("catalog", "one", "127.0.0.1", 9001),
                instance("catalog", "two", "127.0.0.2", 9002),
                instance("catalog", "six", "::1", 9003),
            ],
        );
        catalog
    }

    fn ask(name: &str, kind: RecordType) -> Answer {
        lookup(&catalog(), &Name::from_ascii(name).unwrap(), kind)
    }

    #[test]
    fn the_api_name_resolves_to_the_gateway_instances() {
        let mut catalog = catalog();
        catalog.services.insert(
            "gateway".into(),
            vec![
                instance("gateway", "g1", "127.0.0.7", 8080),
                instance("gateway", "g2", "127.0.0.8", 8080),
            ],
        );
        let answer = lookup(
            &catalog,
            &Name::from_ascii("api.stratus.").unwrap(),
            RecordType::A,
        );
        let addresses: Vec<String> = answer
            .answers
            .iter()
            .map(|r| r.data().to_string())
            .collect();
        assert_eq!(addresses, ["127.0.0.7", "127.0.0.8"]);
        let custom = lookup_with(
            &catalog,
            &Name::from_ascii("shop.example.").unwrap(),
            RecordType::A,
            "shop.example",
        );
        assert_eq!(custom.answers.len(), 2);
        // Without gateway instances the name does not exist (yet).
        let empty = lookup(
            &super::tests::catalog(),
            &Name::from_ascii("api.stratus").unwrap(),
            RecordType::A,
        );
        assert_eq!(empty.code, ResponseCode::NXDomain);
    }

    #[test]
    fn a_records_for_every_instance_with_ttl_zero() {
        let answer = ask("catalog.service.stratus.", RecordType::A);
        assert_eq!(answer.code, ResponseCode::NoError);
        let addresses: Vec<String> = answer
            .answers
            .iter()
            .map(|r| r.data().to_string())
            .collect();
        assert_eq!(addresses, ["127.0.0.1", "127.0.0.2"]);
        assert!(answer.answers.iter().all(|r| r.ttl() == 0));
        assert_eq!(
            ask("CATALOG.Service.Stratus", RecordType::AAAA)
                .answers
                .len(),
            1
        );
    }

    #[test]
    fn srv_records_name_each_instance_and_carry_its_port() {
        let answer = ask("catalog.service.stratus.", RecordType::SRV);
        let ports: Vec<u16> = answer
            .answers
            .iter()
            .filter_map(|r| match r.data() {
                RData::SRV(srv) => Some(srv.port()),
                _ => None,
            })
            .collect();
        assert_eq!(ports, [9001, 9002, 9003]);
        assert_eq!(answer.additionals.len(), 3);
        let rfc = ask("_catalog._tcp.service.stratus.", RecordType::SRV);
        assert_eq!(rfc.answers.len(), 3);
        let one = ask("one.catalog.service.stratus.", RecordType::A);
        assert_eq!(one.answers.len(), 1);
        assert_eq!(one.answers[0].data().to_string(), "127.0.0.1");
    }

    #[test]
    fn unknown_names_and_other_zones() {
        assert_eq!(
            ask("orders.service.stratus.", RecordType::A).code,
            ResponseCode::NXDomain
        );
        assert_eq!(
            ask("nine.catalog.service.stratus.", RecordType::A).code,
            ResponseCode::NXDomain
        );
        assert_eq!(
            ask("example.com.", RecordType::A).code,
            ResponseCode::Refused
        );
        assert_eq!(
            ask("service.stratus.", RecordType::A).code,
            ResponseCode::Refused
        );
        // A known name with nothing of the asked type: NOERROR and no records.
        let mx = ask("catalog.service.stratus.", RecordType::MX);
        assert_eq!(mx.code, ResponseCode::NoError);
        assert!(mx.answers.is_empty());
    }
}
