/** Dumpers for the compiler's passes (`tapwall compile --dump ...`). */
import type { Atom, CompiledPolicy } from '../policy/compile.js';
import { serviceAtomText } from '../policy/services.js';

function atomText(a: Atom): string {
  // Class ranges are shown only for a side that names addresses ("any" is every class).
  const side = (label: string, [lo, hi]: [number, number]) => (label === 'any' ? 'any' : `${label} [class ${lo === hi ? lo : `${lo}-${hi}`}]`);
  return `${side(a.src, a.srcClasses)} -> ${side(a.dst, a.dstClasses)} ${serviceAtomText(a.service)}`;
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
      const count = (list: typeof t.v4) => list.reduce((n, f) => n + f.entries, 0);
      out.push(`vNIC ${nic} (${p.egress.workload}): ${t.rules.length} rules, ${count(t.v4)} IPv4 + ${count(t.v6)} IPv6 entries`);
      for (const [label, fam] of [['IPv4', t.v4], ['IPv6', t.v6]] as const) {
        for (const f of fam) {
          const section = f.entries > 0 ? c.rules[f.atomRule[0]].section : '';
          out.push(`  ${label} section ${section}: ${f.classes.classes} address classes over ${f.classes.intervals} intervals, ${f.entries} entries`);
          f.atoms?.forEach((a, i) => {
            const r = c.rules[a.rule];
            out.push(`  ${String(i).padStart(4)}  ${r.section}/${r.id} ${r.action}: ${atomText(a)}`);
          });
        }
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
      const sum = (list: typeof t.v4) => `${list.length} section tries, ${list.reduce((n, f) => n + f.trie.stats.bytes, 0)} bytes, depth ${Math.max(0, ...list.map((f) => f.trie.stats.maxDepth))}`;
      out.push(`vNIC ${nic} (${p.egress.workload}): ${t.rules.length} rules; IPv4 ${sum(t.v4)}; IPv6 ${sum(t.v6)}`);
    }
  }
  return `${out.join('\n')}\n`;
}
