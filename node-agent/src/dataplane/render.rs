//! Rulesets and deltas into nftables JSON batches. Pure: values in, one JSON
//! document out; the batch is one atomic kernel transaction when `nft -j -f -`
//! applies it.
//!
//! Objects are typed with the `nftables` crate's schema. Its schema cannot
//! declare a named verdict map, so that declaration is spliced in as raw JSON.

use std::borrow::Cow;

use bulkhead_core::compile::names;
use bulkhead_proto::v1 as pb;
use nftables::expr::{self, Expression, NamedExpression};
use nftables::schema::{self, NfCmd, NfListObject, NfObject};
use nftables::stmt::{self, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde_json::{Value, json};

/// Bumped when the layout changes incompatibly; recorded in the kernel.
/// 1: the generation record is the comment of the one rule of chain
/// `bhmeta`; 2: the comment of the one element of set `bhmeta` (so that
/// writing it changes no rule, which would make the kernel validate the
/// whole table).
pub const SCHEMA: u32 = 2;

/// The key of the generation record's one element in set `bhmeta` (type
/// `mark`); the record is the element's comment.
pub const RECORD_KEY: u32 = 0;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot render {what}: {problem}")]
pub struct RenderError {
    pub what: String,
    pub problem: String,
}

fn bad(what: impl Into<String>, problem: impl Into<String>) -> RenderError {
    RenderError {
        what: what.into(),
        problem: problem.into(),
    }
}

/// Agent-managed set contents: `(set name, elements)`.
pub type AgentSets = [(String, Vec<pb::Element>)];

/// A batch under construction.
#[derive(Debug, Default)]
pub struct Batch {
    cmds: Vec<Value>,
}

impl Batch {
    fn push(&mut self, cmd: NfCmd<'_>) -> Result<(), RenderError> {
        let v = serde_json::to_value(NfObject::CmdObject(cmd))
            .map_err(|e| bad("command", e.to_string()))?;
        self.cmds.push(v);
        Ok(())
    }

    fn raw(&mut self, v: Value) {
        self.cmds.push(v);
    }

    pub fn len(&self) -> usize {
        self.cmds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }

    /// The `{"nftables": [...]}` document.
    pub fn to_json(&self) -> String {
        json!({ "nftables": self.cmds }).to_string()
    }

    /// The first `n` commands, as a batch of their own.
    pub fn prefix(&self, n: usize) -> Batch {
        Batch {
            cmds: self.cmds[..n.min(self.cmds.len())].to_vec(),
        }
    }

    /// Command `i` in words: `add rule to chain i_… ("np shop/api ingress[1]")`.
    pub fn describe(&self, i: usize) -> String {
        let Some(cmd) = self
            .cmds
            .get(i)
            .and_then(Value::as_object)
            .and_then(|o| o.iter().next())
        else {
            return format!("command {i}");
        };
        let (op, obj) = cmd;
        let Some((kind, body)) = obj.as_object().and_then(|o| o.iter().next()) else {
            return format!("{op} (command {i})");
        };
        let field = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("");
        match kind.as_str() {
            "rule" => {
                let comment = field("comment");
                if comment.is_empty() {
                    format!("{op} rule to chain {}", field("chain"))
                } else {
                    format!("{op} rule to chain {} ({comment:?})", field("chain"))
                }
            }
            "element" => format!("{op} elements of {}", field("name")),
            other => format!("{op} {other} {}", field("name")),
        }
    }
}

fn table() -> schema::Table<'static> {
    schema::Table {
        family: NfFamily::INet,
        name: names::TABLE.into(),
        handle: None,
    }
}

fn s(x: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(x.to_owned()))
}

fn set_ref(name: &str) -> Expression<'static> {
    s(&format!("@{name}"))
}

fn set_type(ty: i32, what: &str) -> Result<schema::SetTypeValue<'static>, RenderError> {
    use schema::SetType as T;
    use schema::SetTypeValue::{Concatenated, Single};
    Ok(
        match pb::SetType::try_from(ty).unwrap_or(pb::SetType::Unspecified) {
            pb::SetType::Ipv4Addr => Single(T::Ipv4Addr),
            pb::SetType::Ipv6Addr => Single(T::Ipv6Addr),
            pb::SetType::InetService => Single(T::InetService),
            pb::SetType::Ipv4AddrService => Concatenated(vec![T::Ipv4Addr, T::InetService].into()),
            pb::SetType::Ipv6AddrService => Concatenated(vec![T::Ipv6Addr, T::InetService].into()),
            pb::SetType::Ifname => Single(T::Ifname),
            pb::SetType::IfnameIpv4Addr => Concatenated(vec![T::Ifname, T::Ipv4Addr].into()),
            pb::SetType::IfnameIpv6Addr => Concatenated(vec![T::Ifname, T::Ipv6Addr].into()),
            pb::SetType::Unspecified => {
                return Err(bad(what.to_owned(), format!("unknown set type {ty}")));
            }
        },
    )
}

fn key_type_name(ty: i32, what: &str) -> Result<&'static str, RenderError> {
    match pb::SetType::try_from(ty).unwrap_or(pb::SetType::Unspecified) {
        pb::SetType::Ipv4Addr => Ok("ipv4_addr"),
        pb::SetType::Ipv6Addr => Ok("ipv6_addr"),
        _ => Err(bad(
            what.to_owned(),
            format!("unsupported map key type {ty}"),
        )),
    }
}

/// One element as an nft expression.
pub fn element(e: &pb::Element) -> Result<Expression<'static>, RenderError> {
    use pb::element::Value as E;
    Ok(match &e.value {
        Some(E::Addr(a)) => s(a),
        Some(E::Prefix(p)) => Expression::Named(NamedExpression::Prefix(expr::Prefix {
            addr: Box::new(s(&p.addr)),
            len: p.len,
        })),
        Some(E::Range(r)) => Expression::Range(Box::new(expr::Range {
            range: [s(&r.first), s(&r.last)],
        })),
        Some(E::AddrPort(ap)) => Expression::Named(NamedExpression::Concat(vec![
            s(&ap.addr),
            Expression::Number(ap.port),
        ])),
        Some(E::Port(p)) => Expression::Number(*p),
        Some(E::Ifname(n)) => s(n),
        Some(E::IfAddr(ia)) => {
            Expression::Named(NamedExpression::Concat(vec![s(&ia.ifname), s(&ia.addr)]))
        }
        None => return Err(bad("element", "empty")),
    })
}

fn verdict_expr(v: &pb::Verdict, what: &str) -> Result<Value, RenderError> {
    Ok(match &v.kind {
        Some(pb::verdict::Kind::Accept(_)) => json!({"accept": null}),
        Some(pb::verdict::Kind::Drop(_)) => json!({"drop": null}),
        Some(pb::verdict::Kind::Return(_)) => json!({"return": null}),
        Some(pb::verdict::Kind::Jump(t)) => json!({"jump": {"target": t}}),
        Some(pb::verdict::Kind::Goto(t)) => json!({"goto": {"target": t}}),
        _ => {
            return Err(bad(
                what.to_owned(),
                "a map verdict must be accept, drop, return, jump or goto",
            ));
        }
    })
}

fn payload(proto: &str, field: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(expr::Payload::PayloadField(
        expr::PayloadField {
            protocol: Cow::Owned(proto.to_owned()),
            field: Cow::Owned(field.to_owned()),
        },
    )))
}

fn addr_payload(field: i32, family: i32) -> Expression<'static> {
    if field == pb::Field::CtOriginalDaddr as i32 {
        // `ct original ip daddr`: the destination before any DNAT. nft's
        // JSON spells the family inside the key (as `nft -j list` prints it).
        return Expression::Named(NamedExpression::CT(expr::CT {
            key: Cow::Borrowed(if family == pb::Family::Ipv6 as i32 {
                "ip6 daddr"
            } else {
                "ip daddr"
            }),
            family: None,
            dir: Some(expr::CTDir::Original),
        }));
    }
    let proto = if family == pb::Family::Ipv6 as i32 {
        "ip6"
    } else {
        "ip"
    };
    let f = if field == pb::Field::Daddr as i32 {
        "daddr"
    } else {
        "saddr"
    };
    payload(proto, f)
}

fn meta(key: expr::MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(expr::Meta { key }))
}

fn mt(left: Expression<'static>, right: Expression<'static>, negate: bool) -> Statement<'static> {
    Statement::Match(stmt::Match {
        left,
        right,
        op: if negate { Operator::NEQ } else { Operator::EQ },
    })
}

fn proto_name(p: i32) -> Result<&'static str, RenderError> {
    match pb::L4Proto::try_from(p).unwrap_or(pb::L4Proto::Unspecified) {
        pb::L4Proto::Tcp => Ok("tcp"),
        pb::L4Proto::Udp => Ok("udp"),
        pb::L4Proto::Sctp => Ok("sctp"),
        pb::L4Proto::Unspecified => Err(bad("match", format!("unknown protocol {p}"))),
    }
}

fn match_stmt(m: &pb::Match) -> Result<Statement<'static>, RenderError> {
    use pb::r#match::Kind as M;
    Ok(match &m.kind {
        Some(M::AddrInSet(a)) => mt(addr_payload(a.field, a.family), set_ref(&a.set), a.negate),
        Some(M::AddrPortInSet(a)) => mt(
            Expression::Named(NamedExpression::Concat(vec![
                addr_payload(a.field, a.family),
                payload("th", "dport"),
            ])),
            set_ref(&a.set),
            false,
        ),
        Some(M::L4proto(p)) => mt(meta(expr::MetaKey::L4proto), s(proto_name(*p)?), false),
        Some(M::Dport(r)) => {
            let right = if r.first == r.last {
                Expression::Number(r.first)
            } else {
                Expression::Range(Box::new(expr::Range {
                    range: [Expression::Number(r.first), Expression::Number(r.last)],
                }))
            };
            mt(payload("th", "dport"), right, false)
        }
        Some(M::CtState(c)) => {
            let mut states = Vec::new();
            for (on, name) in [
                (c.established, "established"),
                (c.related, "related"),
                (c.new, "new"),
                (c.invalid, "invalid"),
            ] {
                if on {
                    states.push(s(name));
                }
            }
            if states.is_empty() {
                return Err(bad("match", "ct state with no state"));
            }
            Statement::Match(stmt::Match {
                left: Expression::Named(NamedExpression::CT(expr::CT {
                    key: "state".into(),
                    family: None,
                    dir: None,
                })),
                right: Expression::List(states),
                op: Operator::IN,
            })
        }
        Some(M::Iifname(i)) => {
            let right = match &i.value {
                Some(pb::ifname_match::Value::Name(n)) => s(n),
                Some(pb::ifname_match::Value::Set(set)) => set_ref(set),
                None => return Err(bad("match", "iifname without a value")),
            };
            mt(meta(expr::MetaKey::Iifname), right, i.negate)
        }
        Some(M::IfaddrInSet(a)) => mt(
            Expression::Named(NamedExpression::Concat(vec![
                meta(expr::MetaKey::Iifname),
                addr_payload(pb::Field::Saddr as i32, a.family),
            ])),
            set_ref(&a.set),
            a.negate,
        ),
        Some(M::AddrInPrefix(a)) => {
            let p = a
                .prefix
                .as_ref()
                .ok_or_else(|| bad("match", "prefix match without a prefix"))?;
            let v6 = p.addr.contains(':');
            mt(
                addr_payload(
                    a.field,
                    if v6 {
                        pb::Family::Ipv6 as i32
                    } else {
                        pb::Family::Ipv4 as i32
                    },
                ),
                Expression::Named(NamedExpression::Prefix(expr::Prefix {
                    addr: Box::new(s(&p.addr)),
                    len: p.len,
                })),
                a.negate,
            )
        }
        None => return Err(bad("match", "empty")),
    })
}

fn rule_cmd(chain: &str, r: &pb::Rule) -> Result<NfCmd<'static>, RenderError> {
    let what = || format!("rule {:?} in chain {chain}", r.comment);
    let mut expr: Vec<Statement<'static>> = Vec::with_capacity(r.matches.len() + 3);
    for m in &r.matches {
        expr.push(match_stmt(m).map_err(|e| bad(what(), e.to_string()))?);
    }
    if r.counter {
        expr.push(Statement::Counter(stmt::Counter::Anonymous(None)));
    }
    if let Some(l) = &r.log {
        expr.push(Statement::Log(Some(stmt::Log {
            prefix: Some(l.prefix.clone().into()),
            group: Some(l.group),
            snaplen: None,
            queue_threshold: None,
            level: None,
            flags: None,
        })));
    }
    if let Some(v) = &r.verdict {
        use pb::verdict::Kind as V;
        expr.push(match &v.kind {
            Some(V::Accept(_)) => Statement::Accept(None),
            Some(V::Drop(_)) => Statement::Drop(None),
            Some(V::Return(_)) => Statement::Return(None),
            Some(V::Jump(t)) => Statement::Jump(stmt::JumpTarget {
                target: t.clone().into(),
            }),
            Some(V::Goto(t)) => Statement::Goto(stmt::JumpTarget {
                target: t.clone().into(),
            }),
            Some(V::Vmap(l)) => Statement::VerdictMap(stmt::VerdictMap {
                key: addr_payload(l.field, l.family),
                data: set_ref(&l.map),
            }),
            None => return Err(bad(what(), "empty verdict")),
        });
    }
    Ok(NfCmd::Add(NfListObject::Rule(schema::Rule {
        family: NfFamily::INet,
        table: names::TABLE.into(),
        chain: chain.to_owned().into(),
        expr: expr.into(),
        handle: None,
        index: None,
        comment: (!r.comment.is_empty()).then(|| r.comment.clone().into()),
    })))
}

fn chain_obj(c: &pb::Chain) -> Result<schema::Chain<'static>, RenderError> {
    let mut ch = schema::Chain {
        family: NfFamily::INet,
        table: names::TABLE.into(),
        name: c.name.clone().into(),
        ..Default::default()
    };
    if let Some(h) = &c.hook {
        ch._type = Some(NfChainType::Filter);
        ch.hook = Some(
            match pb::HookType::try_from(h.hook).unwrap_or(pb::HookType::Unspecified) {
                pb::HookType::Forward => NfHook::Forward,
                pb::HookType::Input => NfHook::Input,
                pb::HookType::Output => NfHook::Output,
                pb::HookType::Unspecified => {
                    return Err(bad(format!("chain {}", c.name), "unknown hook"));
                }
            },
        );
        ch.prio = Some(h.priority);
        ch.policy = Some(if h.drop {
            NfChainPolicy::Drop
        } else {
            NfChainPolicy::Accept
        });
    }
    Ok(ch)
}

fn named_chain(name: &str) -> schema::Chain<'static> {
    schema::Chain {
        family: NfFamily::INet,
        table: names::TABLE.into(),
        name: name.to_owned().into(),
        ..Default::default()
    }
}

fn set_obj(
    st: &pb::Set,
    elements: Option<&[pb::Element]>,
) -> Result<schema::Set<'static>, RenderError> {
    let what = format!("set {}", st.name);
    let elems = elements.unwrap_or(&st.elements);
    let elem = if elems.is_empty() {
        None
    } else {
        Some(
            elems
                .iter()
                .map(element)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(&what, e.to_string()))?
                .into(),
        )
    };
    Ok(schema::Set {
        family: NfFamily::INet,
        table: names::TABLE.into(),
        name: st.name.clone().into(),
        handle: None,
        set_type: set_type(st.r#type, &what)?,
        policy: None,
        flags: st
            .interval
            .then(|| [schema::SetFlag::Interval].into_iter().collect()),
        elem,
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    })
}

fn elements_obj(set: &str, elems: &[pb::Element]) -> Result<NfListObject<'static>, RenderError> {
    let what = format!("elements of {set}");
    Ok(NfListObject::Element(schema::Element {
        family: NfFamily::INet,
        table: names::TABLE.into(),
        name: set.to_owned().into(),
        elem: elems
            .iter()
            .map(element)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(what, e.to_string()))?
            .into(),
    }))
}

fn map_decl(m: &pb::Map) -> Result<Value, RenderError> {
    let what = format!("map {}", m.name);
    Ok(json!({"add": {"map": {
        "family": "inet",
        "table": names::TABLE,
        "name": m.name,
        "type": key_type_name(m.key_type, &what)?,
        "map": "verdict",
    }}}))
}

fn map_elements(op: &str, map: &str, entries: &[pb::MapEntry]) -> Result<Value, RenderError> {
    let what = format!("entries of map {map}");
    let mut elem = Vec::with_capacity(entries.len());
    for e in entries {
        let key = e
            .key
            .as_ref()
            .ok_or_else(|| bad(&what, "entry without key"))?;
        let key = serde_json::to_value(element(key)?).map_err(|x| bad(&what, x.to_string()))?;
        let v = verdict_expr(
            e.verdict
                .as_ref()
                .ok_or_else(|| bad(&what, "entry without verdict"))?,
            &what,
        )?;
        elem.push(json!([key, v]));
    }
    Ok(
        json!({op: {"element": {"family": "inet", "table": names::TABLE, "name": map, "elem": elem}}}),
    )
}

fn map_keys(map: &str, keys: &[pb::Element]) -> Result<Value, RenderError> {
    let what = format!("keys of map {map}");
    let elem: Vec<Value> = keys
        .iter()
        .map(|k| {
            element(k).and_then(|e| serde_json::to_value(e).map_err(|x| bad(&what, x.to_string())))
        })
        .collect::<Result<_, _>>()?;
    Ok(
        json!({"delete": {"element": {"family": "inet", "table": names::TABLE, "name": map, "elem": elem}}}),
    )
}

/// The comment of the rule in the meta chain that records what is applied.
pub fn meta_comment(node: &str, generation: u64) -> String {
    format!("bulkhead schema={SCHEMA} generation={generation} node={node}")
}

/// What the meta comment says: `(schema, generation, node)`.
pub fn parse_meta_comment(c: &str) -> Option<(u32, u64, String)> {
    let rest = c.strip_prefix("bulkhead ")?;
    let (mut schema, mut generation, mut node) = (None, None, None);
    for part in rest.split(' ') {
        match part.split_once('=') {
            Some(("schema", v)) => schema = v.parse().ok(),
            Some(("generation", v)) => generation = v.parse().ok(),
            Some(("node", v)) => node = Some(v.to_owned()),
            _ => {}
        }
    }
    Some((schema?, generation?, node?))
}

fn set_key(name: &str) -> Value {
    json!({"family": "inet", "table": names::TABLE, "name": name})
}

/// The generation record: `flush set bhmeta; add element bhmeta { 0 comment
/// "..." }`, an element change only.
fn meta_record(batch: &mut Batch, node: &str, generation: u64) -> Result<(), RenderError> {
    batch.raw(json!({"flush": {"set": set_key(names::META)}}));
    let mut elem = set_key(names::META);
    elem["elem"] =
        json!([{"elem": {"val": RECORD_KEY, "comment": meta_comment(node, generation)}}]);
    batch.raw(json!({"add": {"element": elem}}));
    Ok(())
}

/// The set that holds the generation record.
fn meta_set() -> Value {
    let mut set = set_key(names::META);
    set["type"] = json!("mark");
    json!({"add": {"set": set}})
}

/// `b`, first turning a table of schema 1 (the record in chain `bhmeta`)
/// into this schema's layout (the record in set `bhmeta`), in the same
/// transaction.
pub fn upgrading(b: Batch) -> Batch {
    let chain = json!({"chain": {"family": "inet", "table": names::TABLE, "name": names::META}});
    let mut cmds = vec![
        meta_set(),
        json!({ "flush": chain }),
        json!({ "delete": chain }),
    ];
    cmds.extend(b.cmds);
    Batch { cmds }
}

fn agent_elements<'a>(agent: &'a AgentSets, name: &str) -> Option<&'a [pb::Element]> {
    agent
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, e)| e.as_slice())
}

/// A full replace of the table, as one transaction: `add table; delete
/// table; add table; ...` is idempotent whether or not the table exists.
pub fn full(rs: &pb::Ruleset, agent: &AgentSets) -> Result<Batch, RenderError> {
    let mut b = Batch::default();
    b.push(NfCmd::Add(NfListObject::Table(table())))?;
    b.push(NfCmd::Delete(NfListObject::Table(table())))?;
    b.push(NfCmd::Add(NfListObject::Table(table())))?;
    // Chains first (empty), so that every jump, goto and map verdict finds
    // its target; then sets and maps; then rules.
    b.raw(meta_set());
    for c in &rs.chains {
        b.push(NfCmd::Add(NfListObject::Chain(chain_obj(c)?)))?;
    }
    for st in &rs.sets {
        let elems = if st.agent_managed {
            Some(agent_elements(agent, &st.name).unwrap_or_default())
        } else {
            None
        };
        b.push(NfCmd::Add(NfListObject::Set(Box::new(set_obj(st, elems)?))))?;
    }
    for m in &rs.maps {
        b.raw(map_decl(m)?);
        if !m.entries.is_empty() {
            b.raw(map_elements("add", &m.name, &m.entries)?);
        }
    }
    for c in &rs.chains {
        for r in &c.rules {
            b.push(rule_cmd(&c.name, r)?)?;
        }
    }
    meta_record(&mut b, &rs.node, rs.generation)?;
    Ok(b)
}

/// A delta as one transaction of element and chain changes, not a reload.
/// `agent` replaces the agent-managed sets' contents when given.
pub fn delta(d: &pb::RulesetDelta, agent: Option<&AgentSets>) -> Result<Batch, RenderError> {
    let mut b = Batch::default();
    for c in &d.add_chains {
        b.push(NfCmd::Add(NfListObject::Chain(chain_obj(c)?)))?;
    }
    for st in &d.add_sets {
        let elems = if st.agent_managed {
            Some(
                agent
                    .and_then(|a| agent_elements(a, &st.name))
                    .unwrap_or_default(),
            )
        } else {
            None
        };
        b.push(NfCmd::Add(NfListObject::Set(Box::new(set_obj(st, elems)?))))?;
    }
    for m in &d.add_maps {
        b.raw(map_decl(m)?);
        if !m.entries.is_empty() {
            b.raw(map_elements("add", &m.name, &m.entries)?);
        }
    }
    for c in &d.set_changes {
        if !c.remove.is_empty() {
            b.push(NfCmd::Delete(elements_obj(&c.set, &c.remove)?))?;
        }
        if !c.add.is_empty() {
            b.push(NfCmd::Add(elements_obj(&c.set, &c.add)?))?;
        }
    }
    for c in d.add_chains.iter().chain(&d.replace_chains) {
        if d.replace_chains.iter().any(|r| r.name == c.name) {
            b.push(NfCmd::Flush(schema::FlushObject::Chain(named_chain(
                &c.name,
            ))))?;
        }
        for r in &c.rules {
            b.push(rule_cmd(&c.name, r)?)?;
        }
    }
    for c in &d.map_changes {
        if !c.remove.is_empty() {
            b.raw(map_keys(&c.map, &c.remove)?);
        }
        if !c.add.is_empty() {
            b.raw(map_elements("add", &c.map, &c.add)?);
        }
    }
    // Deletions last, once nothing refers to what goes.
    for name in &d.delete_chains {
        b.push(NfCmd::Flush(schema::FlushObject::Chain(named_chain(name))))?;
    }
    for name in &d.delete_chains {
        b.push(NfCmd::Delete(NfListObject::Chain(named_chain(name))))?;
    }
    for name in &d.delete_maps {
        b.raw(json!({"delete": {"map": {"family": "inet", "table": names::TABLE, "name": name}}}));
    }
    for name in &d.delete_sets {
        b.raw(json!({"delete": {"set": {"family": "inet", "table": names::TABLE, "name": name}}}));
    }
    if let Some(agent) = agent {
        agent_sets(&mut b, agent)?;
    }
    meta_record(&mut b, &d.node, d.generation)?;
    Ok(b)
}

/// Replaces the agent-managed sets' contents: flush and refill, atomically.
pub fn agent_sets(b: &mut Batch, agent: &AgentSets) -> Result<(), RenderError> {
    for (name, elems) in agent {
        b.raw(json!({"flush": {"set": {"family": "inet", "table": names::TABLE, "name": name}}}));
        if !elems.is_empty() {
            b.push(NfCmd::Add(elements_obj(name, elems)?))?;
        }
    }
    Ok(())
}

/// Only the agent-managed sets, keeping the generation.
pub fn agent_only(node: &str, generation: u64, agent: &AgentSets) -> Result<Batch, RenderError> {
    let mut b = Batch::default();
    agent_sets(&mut b, agent)?;
    meta_record(&mut b, node, generation)?;
    Ok(b)
}
