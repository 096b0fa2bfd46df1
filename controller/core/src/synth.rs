//! A synthetic cluster generator for benchmarks and tests: realistic label
//! schemes (team/env namespaces, app/tier pods), a mix of selectors,
//! `matchExpressions`, ipBlocks with `except`, named ports that mean different
//! numbers on different tiers, and port ranges. Deterministic for a seed.
//! Produces Kubernetes YAML, so that benchmarks include the loader.

use std::fmt::Write as _;

/// The shape of a generated cluster.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub namespaces: usize,
    pub pods: usize,
    pub policies: usize,
    pub nodes: usize,
    pub seed: u64,
}

/// splitmix64: small, fast and good enough to spread labels.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const TIERS: [&str; 5] = ["web", "api", "db", "cache", "worker"];
const ENVS: [&str; 3] = ["prod", "staging", "dev"];
const APPS_PER_NS: usize = 10;

/// `(name, number)` container ports of a tier: "http" is 80 on web, 8080 on api.
fn tier_ports(tier: &str) -> &'static [(&'static str, u16, &'static str)] {
    match tier {
        "web" => &[("http", 80, "TCP"), ("metrics", 9100, "TCP")],
        "api" => &[
            ("http", 8080, "TCP"),
            ("grpc", 9090, "TCP"),
            ("metrics", 9100, "TCP"),
        ],
        "db" => &[("postgres", 5432, "TCP")],
        "cache" => &[("redis", 6379, "TCP"), ("gossip", 7946, "UDP")],
        _ => &[],
    }
}

pub fn namespace_name(i: usize) -> String {
    format!("ns-{i:03}")
}

/// The generated cluster as one multi-document YAML stream.
pub fn cluster_yaml(shape: &Shape) -> String {
    let mut rng = Rng::new(shape.seed);
    let mut y = String::with_capacity(shape.pods * 600 + shape.policies * 900);
    for n in 0..shape.nodes {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: node-{n}\n  labels:\n    zone: z{}\nstatus:\n  addresses:\n  - type: InternalIP\n    address: 192.168.{}.{}\n",
            n % 3,
            n / 250,
            n % 250 + 1
        );
    }
    for i in 0..shape.namespaces {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n  labels:\n    team: team-{}\n    env: {}\n    tenant: t{}\n",
            namespace_name(i),
            i % 20,
            ENVS[i % 3],
            i % 10
        );
    }
    for p in 0..shape.pods {
        let ns = p % shape.namespaces.max(1);
        let app = (p / shape.namespaces.max(1)) % APPS_PER_NS;
        let tier = TIERS[app % TIERS.len()];
        let ip4 = format!("10.{}.{}.{}", 64 + (p >> 16) % 64, (p >> 8) & 255, p & 255);
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: app-{app}-{p}\n  namespace: {}\n  labels:\n    app: app-{app}\n    tier: {tier}\n    version: v{}\nspec:\n  nodeName: node-{}\n  containers:\n  - name: main\n    image: example\n",
            namespace_name(ns),
            rng.below(3),
            p % shape.nodes.max(1)
        );
        let ports = tier_ports(tier);
        if !ports.is_empty() {
            y.push_str("    ports:\n");
            for (name, num, proto) in ports {
                let _ = write!(
                    y,
                    "    - name: {name}\n      containerPort: {num}\n      protocol: {proto}\n"
                );
            }
        }
        let _ = write!(
            y,
            "status:\n  phase: Running\n  podIP: {ip4}\n  podIPs:\n  - ip: {ip4}\n"
        );
        if p % 4 == 0 {
            let _ = writeln!(y, "  - ip: fd00::{:x}", p + 1);
        }
    }
    for k in 0..shape.policies {
        let ns = k % shape.namespaces.max(1);
        y.push_str(&policy_yaml(
            &mut rng,
            k,
            &namespace_name(ns),
            shape.namespaces,
        ));
    }
    y
}

fn policy_yaml(rng: &mut Rng, k: usize, ns: &str, namespaces: usize) -> String {
    let app = rng.below(APPS_PER_NS);
    let mut y = format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: pol-{k}\n  namespace: {ns}\nspec:\n"
    );
    match k % 10 {
        0 => {
            // Default deny, ingress and egress, with DNS allowed.
            y.push_str("  podSelector: {}\n  policyTypes: [Ingress, Egress]\n  egress:\n  - to:\n    - namespaceSelector:\n        matchLabels:\n          kubernetes.io/metadata.name: kube-system\n    ports:\n    - protocol: UDP\n      port: 53\n");
        }
        1 | 2 => {
            // An app accepts its callers on a named port.
            let tier = TIERS[app % TIERS.len()];
            let port = tier_ports(tier).first().map(|p| p.0).unwrap_or("http");
            let _ = write!(
                y,
                "  podSelector:\n    matchLabels:\n      app: app-{app}\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          tier: {}\n    ports:\n    - port: {port}\n",
                rng.pick(&TIERS)
            );
        }
        3 => {
            // Cross-namespace: a team's namespaces may call an app.
            let _ = write!(
                y,
                "  podSelector:\n    matchLabels:\n      app: app-{app}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          team: team-{}\n      podSelector:\n        matchExpressions:\n        - key: tier\n          operator: In\n          values: [web, api]\n    ports:\n    - protocol: TCP\n      port: {}\n",
                rng.below(20),
                rng.pick(&[80, 8080, 9090])
            );
        }
        4 => {
            // Egress to the internet except private ranges.
            let _ = write!(
                y,
                "  podSelector:\n    matchLabels:\n      tier: {}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock:\n        cidr: 0.0.0.0/0\n        except: [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16]\n    ports:\n    - port: 443\n",
                rng.pick(&TIERS)
            );
        }
        5 => {
            // Environments may not call each other.
            let _ = write!(
                y,
                "  podSelector:\n    matchExpressions:\n    - key: tier\n      operator: NotIn\n      values: [worker]\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchExpressions:\n        - key: env\n          operator: In\n          values: [{}]\n",
                rng.pick(&ENVS)
            );
        }
        6 => {
            // NodePort-style range, from half of a pod range.
            let block = 64 + rng.below(4);
            let _ = write!(
                y,
                "  podSelector:\n    matchLabels:\n      app: app-{app}\n  ingress:\n  - ports:\n    - protocol: TCP\n      port: 30000\n      endPort: 32767\n    from:\n    - ipBlock:\n        cidr: 10.{block}.0.0/16\n        except: [10.{block}.128.0/17]\n",
            );
        }
        7 => {
            // Egress to a database in another namespace, on its named port.
            let _ = write!(
                y,
                "  podSelector:\n    matchLabels:\n      tier: api\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector:\n        matchLabels:\n          kubernetes.io/metadata.name: {}\n      podSelector:\n        matchLabels:\n          tier: db\n    ports:\n    - port: postgres\n",
                namespace_name(rng.below(namespaces.max(1)))
            );
        }
        8 => {
            // Monitoring scrapes metrics everywhere.
            y.push_str("  podSelector:\n    matchExpressions:\n    - key: tier\n      operator: Exists\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          team: team-0\n      podSelector:\n        matchLabels:\n          app: app-9\n    ports:\n    - port: metrics\n");
        }
        _ => {
            // Version canary: only the new version talks to the cache.
            let _ = write!(
                y,
                "  podSelector:\n    matchLabels:\n      tier: cache\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          version: v{}\n    ports:\n    - port: redis\n    - protocol: UDP\n      port: gossip\n",
                rng.below(3)
            );
        }
    }
    y
}

/// How many cluster-scoped tier objects [`tiers_yaml`] generates.
#[derive(Clone, Copy, Debug)]
pub struct Tiers {
    pub cluster_policies: usize,
    pub tenants: usize,
}

/// ClusterNetworkPolicies (both tiers, all actions, every peer kind, port
/// numbers, ranges and named ports) and Tenants (by the `tenant` namespace
/// label, with exceptions) for a cluster of `shape`, as YAML to append to
/// [`cluster_yaml`]'s.
pub fn tiers_yaml(shape: &Shape, tiers: &Tiers) -> String {
    let mut rng = Rng::new(shape.seed ^ 0x7153);
    let mut y = String::new();
    for k in 0..tiers.cluster_policies {
        let tier = if k % 3 == 2 { "Baseline" } else { "Admin" };
        let _ = write!(
            y,
            "---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata:\n  name: cnp-{k}\nspec:\n  tier: {tier}\n  priority: {}\n",
            rng.below(50) * 10
        );
        if k % 2 == 0 {
            let _ = write!(
                y,
                "  subject:\n    namespaces:\n      matchLabels:\n        env: {}\n",
                rng.pick(&ENVS)
            );
        } else {
            let _ = write!(
                y,
                "  subject:\n    pods:\n      namespaceSelector: {{}}\n      podSelector:\n        matchLabels:\n          tier: {}\n",
                rng.pick(&TIERS)
            );
        }
        let action = |rng: &mut Rng| *rng.pick(&["Accept", "Deny", "Pass"]);
        match k % 4 {
            0 => {
                // Environments apart, except monitoring on a named port.
                let _ = write!(
                    y,
                    "  ingress:\n  - name: metrics\n    action: Accept\n    from:\n    - pods:\n        namespaceSelector:\n          matchLabels:\n            team: team-0\n        podSelector:\n          matchLabels:\n            app: app-9\n    protocols:\n    - destinationNamedPort: metrics\n  - action: {}\n    from:\n    - namespaces:\n        matchLabels:\n          env: {}\n",
                    action(&mut rng),
                    rng.pick(&ENVS)
                );
            }
            1 => {
                // Egress to the internet and the nodes.
                let _ = write!(
                    y,
                    "  egress:\n  - action: {}\n    to:\n    - networks: [0.0.0.0/0, \"::/0\"]\n    protocols:\n    - tcp:\n        destinationPort:\n          number: 443\n  - action: Deny\n    to:\n    - nodes:\n        matchLabels:\n          zone: z{}\n    protocols:\n    - tcp:\n        destinationPort:\n          range: {{start: 10250, end: 10259}}\n",
                    action(&mut rng),
                    rng.below(3)
                );
            }
            2 => {
                let _ = write!(
                    y,
                    "  ingress:\n  - action: {}\n    from:\n    - namespaces: {{}}\n    protocols:\n    - udp:\n        destinationPort:\n          range: {{start: 30000, end: 32767}}\n",
                    action(&mut rng)
                );
            }
            _ => {
                let _ = write!(
                    y,
                    "  egress:\n  - action: {}\n    to:\n    - pods:\n        namespaceSelector:\n          matchLabels:\n            team: team-{}\n        podSelector:\n          matchLabels:\n            tier: db\n    protocols:\n    - destinationNamedPort: postgres\n",
                    action(&mut rng),
                    rng.below(20)
                );
            }
        }
    }
    for t in 0..tiers.tenants.min(10) {
        let _ = write!(
            y,
            "---\napiVersion: bulkhead.io/v1alpha1\nkind: Tenant\nmetadata:\n  name: tenant-{t}\nspec:\n  namespaceSelector:\n    matchLabels:\n      tenant: t{t}\n  allowFrom:\n  - tenant: tenant-{}\n    ports:\n    - port: http\n  - cidr: 10.64.0.0/24\n  allowTo:\n  - namespace: {}\n    ports:\n    - protocol: UDP\n      port: 53\n",
            (t + 1) % 10,
            namespace_name(rng.below(shape.namespaces.max(1)))
        );
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator makes only valid input: benchmarks must measure what
    /// they claim to.
    #[test]
    fn generated_clusters_load_without_errors() {
        let yaml = cluster_yaml(&Shape {
            namespaces: 10,
            pods: 300,
            policies: 200,
            nodes: 3,
            seed: 9,
        });
        let loaded = crate::load_str("synth.yaml", &yaml);
        let errors: Vec<String> = loaded
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(|d| d.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:#?}");
        assert_eq!(loaded.objects.len(), 3 + 10 + 300 + 200);
    }

    #[test]
    fn generated_tiers_load_without_errors() {
        let shape = Shape {
            namespaces: 10,
            pods: 100,
            policies: 20,
            nodes: 3,
            seed: 4,
        };
        let yaml = tiers_yaml(
            &shape,
            &Tiers {
                cluster_policies: 12,
                tenants: 4,
            },
        );
        let loaded = crate::load_str("tiers.yaml", &yaml);
        let errors: Vec<String> = loaded
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(|d| d.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:#?}");
        assert_eq!(loaded.objects.len(), 16);
    }
}
