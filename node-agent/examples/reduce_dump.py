# One-off (docs/BENCHMARKS.md, the full apply): `python3 reduce_dump.py [dedupe] < full.json`
# reads full.json from the cwd; drops the empty IPv6 sets and the rules that match them,
# and with `dedupe` points rules at one set of each content. Writes the batch to stdout.
import json,collections,sys
d=json.load(open('full.json'))
cmds=d['nftables']
later={c['add']['element']['name'] for c in cmds if 'add' in c and 'element' in c['add']}
sets={c['add']['set']['name']:c['add']['set'] for c in cmds if 'add' in c and 'set' in c['add']}
def is6(t): return 'ipv6_addr' in json.dumps(t)
drop={n for n,s in sets.items() if not s.get('elem') and is6(s['type']) and n not in later}
alias={}
if 'dedupe' in sys.argv:
    content={}
    for n,s in sets.items():
        if n in drop or n in later: continue
        key=(json.dumps(s['type']), json.dumps(sorted(json.dumps(e) for e in s.get('elem',[]))), json.dumps(s.get('flags')))
        if key in content: alias[n]=content[key]
        else: content[key]=n
out=[];removed_rules=0;removed_matches=0
for c in cmds:
    if 'add' in c and 'set' in c['add']:
        n=c['add']['set']['name']
        if n in drop or n in alias: continue
    if 'add' in c and 'rule' in c['add']:
        r=c['add']['rule']; keep=True; ex=[]
        for e in r['expr']:
            m=e.get('match')
            if m and isinstance(m.get('right'),str) and m['right'].startswith('@'):
                n=m['right'][1:]
                if n in drop:
                    if m['op']=='==': keep=False; break
                    removed_matches+=1; continue
                if n in alias: m['right']='@'+alias[n]
            ex.append(e)
        if not keep: removed_rules+=1; continue
        r['expr']=ex
    out.append(c)
rules=sum(1 for c in out if 'add' in c and 'rule' in c['add'])
nsets=sum(1 for c in out if 'add' in c and 'set' in c['add'])
print(f"dropped {len(drop)} empty ipv6 sets, aliased {len(alias)} duplicate sets; removed {removed_rules} rules, {removed_matches} matches; left {nsets} sets, {rules} rules", file=sys.stderr)
json.dump({'nftables':out},sys.stdout)
