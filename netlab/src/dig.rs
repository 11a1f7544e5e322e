//! DNS queries from inside a pod with `dig`, which reads the pod's resolv.conf (`ip netns
//! exec` mounts `/etc/netns/<pod>/resolv.conf` over `/etc/resolv.conf`), so the query takes
//! the path a pod's resolver takes: to its cluster's gateway DNS.
//!
//! [`parse`] is pure: it reads the response code and the answer and additional sections of
//! `dig +noall +comments +answer +additional` output.

use std::time::Duration;

use anyhow::{Context, bail};

use crate::lab::Lab;
use crate::ns;

/// dig's own limits (1 s per try, 2 tries) plus slack, as our bound on the process.
const DIG_TIMEOUT: Duration = Duration::from_secs(8);

/// UDP, or TCP (`+tcp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    Udp,
    Tcp,
}

/// One resource record as dig prints it (owner lowercased; type and data as printed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rr {
    pub name: String,
    pub rtype: String,
    pub data: String,
}

/// What a query got back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reply {
    /// The response code, as dig names it: `NOERROR`, `NXDOMAIN`, `REFUSED`...
    pub status: String,
    /// Whether the AA bit was set.
    pub authoritative: bool,
    pub answer: Vec<Rr>,
    pub additional: Vec<Rr>,
}

impl Reply {
    /// The data of the answer records of type `rtype`, in answer order.
    pub fn data(&self, rtype: &str) -> Vec<String> {
        self.answer
            .iter()
            .filter(|r| r.rtype == rtype)
            .map(|r| r.data.clone())
            .collect()
    }
}

/// Queries `name` for `rtype` from pod `pod` of cluster `cluster`, through its resolv.conf.
pub fn dig(
    lab: &Lab,
    (cluster, pod): (usize, usize),
    name: &str,
    rtype: &str,
    over: Over,
) -> anyhow::Result<Reply> {
    let ns = lab.topology().pod_ns(cluster, pod);
    let mut args = vec![
        "dig",
        "+noall",
        "+comments",
        "+answer",
        "+additional",
        "+time=1",
        "+tries=2",
        name,
        rtype,
    ];
    if over == Over::Tcp {
        args.push("+tcp");
    }
    let output = ns::run(&mut ns::exec_in(&ns, &args), DIG_TIMEOUT)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "dig {name} {rtype} in {ns} failed ({}): {} {}",
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    parse(&stdout).with_context(|| format!("dig {name} {rtype} in {ns}: {stdout}"))
}

/// Reads dig's `+noall +comments +answer +additional` output.
pub fn parse(stdout: &str) -> anyhow::Result<Reply> {
    #[derive(PartialEq)]
    enum Section {
        Other,
        Answer,
        Additional,
    }
    let mut reply = Reply::default();
    let mut section = Section::Other;
    for line in stdout.lines().map(str::trim) {
        if let Some(header) = line.strip_prefix(";; ->>HEADER<<-") {
            let status = header
                .split(',')
                .find_map(|part| part.trim().strip_prefix("status: "))
                .context("a header without a status")?;
            reply.status = status.trim().to_owned();
        } else if let Some(flags) = line.strip_prefix(";; flags:") {
            let flags = flags.split(';').next().unwrap_or_default();
            reply.authoritative = flags.split_whitespace().any(|f| f == "aa");
        } else if line.starts_with(";; ANSWER SECTION") {
            section = Section::Answer;
        } else if line.starts_with(";; ADDITIONAL SECTION") {
            section = Section::Additional;
        } else if line.starts_with(";;") && line.ends_with("SECTION:") {
            section = Section::Other;
        } else if !line.is_empty() && !line.starts_with(';') {
            // name TTL class type data...
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, _ttl, _class, rtype, data @ ..] = fields.as_slice() else {
                bail!("a record line with too few fields: {line:?}");
            };
            let rr = Rr {
                name: name.to_ascii_lowercase(),
                rtype: (*rtype).to_owned(),
                data: data.join(" "),
            };
            match section {
                Section::Answer => reply.answer.push(rr),
                Section::Additional => reply.additional.push(rr),
                Section::Other => {}
            }
        }
    }
    if reply.status.is_empty() {
        bail!("no reply header in dig's output");
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRV: &str = "
; <<>> DiG 9.18.28-1~deb12u2-Debian <<>> +noall +comments +answer +additional _http._tcp.web.shop.svc.global SRV
;; global options: +cmd
;; Got answer:
;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 4242
;; flags: qr aa rd; QUERY: 1, ANSWER: 1, AUTHORITY: 0, ADDITIONAL: 2
;; WARNING: recursion requested but not available

;; OPT PSEUDOSECTION:
; EDNS: version: 0, flags:; udp: 1232
;; ANSWER SECTION:
_http._tcp.web.shop.svc.global.	5 IN	SRV	0 1 80 c1.web.shop.svc.global.

;; ADDITIONAL SECTION:
C1.web.shop.svc.global.	5	IN	A	10.101.128.10
";

    #[test]
    fn parses_status_flags_and_sections() {
        let reply = parse(SRV).unwrap();
        assert_eq!(reply.status, "NOERROR");
        assert!(reply.authoritative);
        assert_eq!(reply.data("SRV"), ["0 1 80 c1.web.shop.svc.global."]);
        assert_eq!(
            reply.additional,
            [Rr {
                name: "c1.web.shop.svc.global.".into(),
                rtype: "A".into(),
                data: "10.101.128.10".into()
            }]
        );
    }

    #[test]
    fn parses_a_negative_answer_and_refuses_garbage() {
        let nx = ";; ->>HEADER<<- opcode: QUERY, status: NXDOMAIN, id: 1\n;; flags: qr rd ra; QUERY: 1, ANSWER: 0, AUTHORITY: 1, ADDITIONAL: 1\n";
        let reply = parse(nx).unwrap();
        assert_eq!(reply.status, "NXDOMAIN");
        assert!(!reply.authoritative);
        assert!(reply.answer.is_empty());
        assert!(parse(";; connection timed out; no servers could be reached\n").is_err());
        let short = ";; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 1\n;; ANSWER SECTION:\nweb. 5 IN\n";
        assert!(parse(short).is_err());
    }
}
