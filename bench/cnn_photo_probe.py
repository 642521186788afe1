#!/usr/bin/env python3
"""Why the cnn could not fit photos: head and normalisation variants of the cnn, in one process, on
pixels decoded once (a probe, not an A/B of imgclf's own code: bench/recipes.py does that).

    SIZE=64 BS=32 [LR=0.001] python bench/cnn_photo_probe.py VARIANT EPOCHS

DATA (env PROBE_DATA, default /tmp/wt14/photos_split: bench/make_photos.py, then imgclf split --val 0.15
--test 0.15) is decoded at SIZExSIZE into PROBE_DIR (default /tmp/wt14/probe). VARIANT names the parts:
`base` (the cnn before issue 14: Rescaling, conv blocks, Flatten -> Dense(128) head), `gap` (global
average pooling head), `std` (each image standardised: its own mean and std), `double` (two convs per
block); combine with `_` (std_gap). Prints one JSON line: train accuracy evaluated in inference mode,
test accuracy, per-epoch fit accuracy, val accuracy and loss, CPU seconds of the fit.
"""
import os, sys, time, json, resource
os.environ["TF_CPP_MIN_LOG_LEVEL"]="2"
import numpy as np
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from imgclf.data.split import load_splits
from imgclf.data.pipeline import decode
from imgclf.preprocessing import PreprocessingSpec
size=int(os.environ.get("SIZE",128))
DATA=os.environ.get("PROBE_DATA","/tmp/wt14/photos_split"); PDIR=os.environ.get("PROBE_DIR","/tmp/wt14/probe")
os.makedirs(PDIR, exist_ok=True)
cache=f"{PDIR}/px{size}.npz"
if not os.path.exists(cache):
    sp=load_splits(DATA,0.1,42)
    spec=PreprocessingSpec(image_size=(size,size),channels=3)
    d={}
    for n in ("train","val","test"):
        ds=getattr(sp,n); r=decode(ds.paths, ds.labels, spec)
        d[n+"_x"]=r.pixels; d[n+"_y"]=r.labels
    np.savez(cache,**d)
d=np.load(cache)
import keras
from keras import layers
def build(variant, shape, n):
    inputs=keras.Input(shape=shape); x=layers.Rescaling(1/255)(inputs)
    if "std" in variant:
        x=layers.Lambda(lambda t: (t-keras.ops.mean(t,axis=(1,2,3),keepdims=True))/(keras.ops.std(t,axis=(1,2,3),keepdims=True)+1e-3))(x)
    def conv(x,f):
        x=layers.Conv2D(f,3,padding="same",use_bias=False)(x); x=layers.BatchNormalization(momentum=0.9)(x); return layers.Activation("relu")(x)
    s=shape[0]; f=32; b=0
    while True:
        b+=1; x=conv(x,f)
        if "double" in variant: x=conv(x,f)
        if s<=8 or b==5: break
        x=layers.MaxPooling2D()(x); x=layers.Dropout(0.1)(x); s//=2; f=min(f*2,256)
    if "gap" in variant:
        x=layers.GlobalAveragePooling2D()(x); x=layers.Dropout(0.3)(x)
    else:
        x=layers.Flatten()(x); x=layers.Dropout(0.3)(x); x=layers.Dense(128,activation="relu")(x); x=layers.Dropout(0.3)(x)
    out=layers.Dense(n,activation="softmax")(x)
    return keras.Model(inputs,out)
variant=sys.argv[1]; epochs=int(sys.argv[2]); lr=float(os.environ.get("LR",1e-3)); bs=int(os.environ.get("BS",64))
keras.utils.set_random_seed(42)
m=build(variant, d["train_x"].shape[1:], 2)
m.compile(optimizer=keras.optimizers.Adam(lr),loss="sparse_categorical_crossentropy",metrics=["accuracy"])
t0=time.time(); c0=resource.getrusage(resource.RUSAGE_SELF)
h=m.fit(d["train_x"].astype("float32"),d["train_y"],batch_size=bs,epochs=epochs,validation_data=(d["val_x"].astype("float32"),d["val_y"]),verbose=0)
c1=resource.getrusage(resource.RUSAGE_SELF)
tr=m.evaluate(d["train_x"].astype("float32"),d["train_y"],verbose=0)[1]
te=m.evaluate(d["test_x"].astype("float32"),d["test_y"],verbose=0)[1]
print(json.dumps(dict(variant=variant,lr=lr,bs=bs,epochs=epochs,size=size,train_acc_eval=round(tr,4),test_acc=round(te,4),
  fit_acc=[round(a,3) for a in h.history["accuracy"]], val_acc=[round(a,3) for a in h.history["val_accuracy"]],
  loss=[round(a,3) for a in h.history["loss"]],
  cpu_s=round(c1.ru_utime+c1.ru_stime-c0.ru_utime-c0.ru_stime,1), wall=round(time.time()-t0,1))), flush=True)
