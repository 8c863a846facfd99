/** Dumpers for the compiler's passes (`tapwall compile --dump ...`). */
import type { Atom, CompiledPolicy } from '../policy/compile.js';
import { serviceAtomText } from '../policy/services.js';

function atomText(a: Atom): string {
  const side = (p: Atom['src']) => (p === null ? 'any' : p.text);
  return `${side(a.src)} -> ${side(a.dst)} ${serviceAtomText(a.service)}`;
}

export function dumpCompiled(c: CompiledPolicy, what: 'groups' | 'points' | 'stats'): string {
  const out: string[] = [];
  if (what === 'groups') {
    for (const [name, g] of c.groups) {
      const addrs = g.addresses.any ? 'any' : g.addresses.prefixes.map((p) => p.text).join(' ') || '(none)';
      out.push(`${name}: members ${[...g.members].join(' ') || '(none)'}; addresses ${addrs}`);
    }
  } else if (what === 'points') {
    for (const [nic, p] of c.points) {
      const t = p.egress.tables;
      out.push(`vNIC ${nic} (${p.egress.workload}): ${t.rules.length} rules, ${t.v4.atoms.length} IPv4 + ${t.v6.atoms.length} IPv6 entries`);
      for (const fam of [t.v4, t.v6]) {
        fam.atoms.forEach((a, i) => {
          const r = c.rules[a.rule];
          out.push(`  ${String(i).padStart(4)}  ${r.section}/${r.id} ${r.action}: ${atomText(a)}`);
        });
      }
      for (let i = 0; i < t.ether.length; i += 2) {
        const r = c.rules[t.ether[i + 1]];
        out.push(`  ether ${r.section}/${r.id} ${r.action}: ethertype 0x${t.ether[i].toString(16)}`);
      }
    }
  } else {
    const s = c.stats;
    out.push(`rules ${s.rules}, compiled entries ${s.atoms}, tries ${s.tries}, ${s.bytes} bytes, built in ${s.buildMs.toFixed(2)} ms`);
    out.push(`default ${c.defaultAction}; spoofguard ${c.policy.spoofguard ? 'on' : 'off'}`);
    for (const [nic, p] of c.points) {
      const t = p.egress.tables;
      out.push(`vNIC ${nic} (${p.egress.workload}): ${t.rules.length} rules; IPv4 trie ${t.v4.trie.stats.bytes} bytes depth ${t.v4.trie.stats.maxDepth}; IPv6 trie ${t.v6.trie.stats.bytes} bytes depth ${t.v6.trie.stats.maxDepth}`);
    }
  }
  return `${out.join('\n')}\n`;
}
