#!/usr/bin/env python3
"""Fails when modules of a crate import each other in a loop (crates/*/src).

A module may use its parent's items and a parent may re-export its children's: a loop
made only of one module and its own submodules is allowed. Any other loop means neither
file can be understood or changed alone; move what both need into the lower module it
belongs to. Edges are `crate::`, `super::` and child paths outside comments and tests.
"""
import re,os,glob,sys
def modpath(crate_src, f):
    rel=os.path.relpath(f, crate_src)[:-3]
    parts=rel.split('/')
    if parts[-1] in ('lib','main','mod'): parts=parts[:-1]
    return tuple(parts)
failed=[]
for crate_src in sorted(glob.glob('crates/*/src')):
    files=[f for f in glob.glob(crate_src+'/**/*.rs', recursive=True) if '/bin/' not in f]
    mods={modpath(crate_src,f):f for f in files}
    edges={m:set() for m in mods}
    for m,f in mods.items():
        text=open(f).read()
        # strip test modules roughly: cut from '#[cfg(test)]\nmod tests' onwards
        cut=re.search(r"#\[cfg\(test\)\]\s*mod tests\s*\{", text)
        if cut: text=text[:cut.start()]
        if f.endswith("/tests.rs"): continue
        text=re.sub(r"//[^\n]*", "", text)
        for ref in re.findall(r"\b(crate|super)::((?:[a-z_][a-z0-9_]*::)*[A-Za-z_][A-Za-z0-9_]*)", text):
            base, path = ref
            segs=path.split('::')
            if base=='crate': start=()
            else:
                # super relative to this module: parent of m (if file is x.rs with module m)
                start=m[:-1]
            # resolve deepest module
            cand=start
            best=None
            for s in segs:
                cand=cand+(s,)
                if cand in mods: best=cand
                else: break
            if best is None and base=='super': best=start if start in mods else None
            if best and best!=m and not (len(best)<len(m) and m[:len(best)]==best and base=='crate' and False):
                edges[m].add(best)
        # bare paths to child modules (`child::Item`, `pub use child::…`)
        for ref in re.findall(r"(?<![:\w])([a-z_][a-z0-9_]*)::", text):
            cand=m+(ref,)
            if cand in mods: edges[m].add(cand)
        # also `use super::{...}` groups
        for grp in re.findall(r"use (crate|super)::\{([^}]*)\}", text):
            base, inner = grp
            start=() if base=='crate' else m[:-1]
            for item in inner.split(','):
                item=item.strip().split('::')[0].strip()
                cand=start+(item,)
                if cand in mods and cand!=m: edges[m].add(cand)
                elif base=='super' and start in mods and start!=m: edges[m].add(start)
    # Tarjan
    index={}; low={}; stack=[]; on=set(); sccs=[]; i=[0]
    sys.setrecursionlimit(10000)
    def strong(v):
        index[v]=low[v]=i[0]; i[0]+=1; stack.append(v); on.add(v)
        for w in edges[v]:
            if w not in index: strong(w); low[v]=min(low[v],low[w])
            elif w in on: low[v]=min(low[v],index[w])
        if low[v]==index[v]:
            comp=[]
            while True:
                w=stack.pop(); on.discard(w); comp.append(w)
                if w==v: break
            if len(comp)>1: sccs.append(comp)
    for v in edges:
        if v not in index: strong(v)
    for c in sccs:
        prefix=os.path.commonprefix([list(x) for x in c])
        if tuple(prefix) in c:
            continue
        failed.append((crate_src, sorted('/'.join(x) or 'lib' for x in c)))
for crate_src, members in failed:
    print(f"import circle in {crate_src}: {' <-> '.join(members)}", file=sys.stderr)
sys.exit(1 if failed else 0)
