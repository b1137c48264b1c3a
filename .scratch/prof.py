import os, sys, time, collections
os.environ.setdefault("JUICEPY_NUM_THREADS","1")
import numpy as np, juicepy as jp
from juicepy import layers as L
from juicepy.models import lenet
from juicepy.train import Adam, Trainer
net = jp.Network(lenet((1,28,28),10),(1,28,28))
tr = Trainer(net, L.SoftmaxCrossEntropy(), Adam(lr=1e-3), batch_size=64)
be = jp.backend("numpy")
rng=np.random.default_rng(0); x=rng.standard_normal((64,1,28,28)).astype(np.float32); y=rng.integers(0,10,64)
for _ in range(5): tr.train_minibatch(be,x,y)
T=collections.defaultdict(list); depth=[0]
cls=type(be)
names=[n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls,n))]
for n in names:
    f=getattr(be,n)
    def w(*a, _f=f, _n=n, **k):
        depth[0]+=1
        t=time.perf_counter(); r=_f(*a,**k); d=time.perf_counter()-t
        depth[0]-=1
        if depth[0]==0:
            shp=tuple(getattr(a[0],'shape',())) if a else ()
            T[(_n,shp)].append(d)
        return r
    try: setattr(be,n,w)
    except Exception: pass
N=int(sys.argv[1]) if len(sys.argv)>1 else 200
T.clear()
t0=time.perf_counter()
for _ in range(N): tr.train_minibatch(be,x,y)
tot=(time.perf_counter()-t0)/N
rows=sorted(((np.median(v)*len(v)/N*1e3,k,len(v)//N) for k,v in T.items()),reverse=True)
s=0
for ms,k,c in rows[:30]:
    s+=ms; print(f"{ms:7.3f} ms x{c} {k}")
print("sum", s, "step", tot*1e3)
