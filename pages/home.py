"""Home: what the tool is, how to start, and the choices made so far."""

from pathlib import Path

import streamlit as st

from tl_dashboard import data, layers
from tl_dashboard import formatting as fmt
from tl_dashboard import ui_state as ui
from tl_dashboard.backbones import describe_backbone
from tl_dashboard.runs import RunStore
from views import present

ss = st.session_state
ui.require_router(ss, "pages/home.py", st.switch_page, st.query_params.to_dict())

st.title("TL Dashboard")
st.markdown(
    "Teach a pretrained image classifier **your** classes. Point it at a folder of images "
    "(one sub-folder per class), pick a backbone, choose which of its blocks stay **frozen**, "
    "and watch loss and accuracy move while it trains. Then compare runs: what does freezing "
    "more or fewer blocks do to speed, accuracy and overfitting?"
)

steps = st.columns(3, border=True)
with steps[0]:
    st.markdown("#### 1 · Data")
    st.caption("The sample set, a folder on this server, a zip or a folder upload, or photos you take.")
    st.page_link("pages/data.py", label="Choose data", icon=":material/photo_library:")
with steps[1]:
    st.markdown("#### 2 · Model")
    st.caption("A timm backbone, drawn block by block. Toggle which blocks are frozen.")
    st.page_link("pages/model.py", label="Choose model and freezing", icon=":material/account_tree:")
with steps[2]:
    st.markdown("#### 3 · Train")
    st.caption("Set epochs and learning rate, press Start, watch the curves live.")
    st.page_link("pages/train.py", label="Train", icon=":material/play_circle:")

st.subheader("Your current choices")
weights = (
    describe_backbone(ss.model)
    if ss.weights == "auto"
    else {"weights_source": "none", "weights_text": "random init (chosen on the Model page)"}
)
n_classes = data.class_folder_count(ss.data_dir)
cols = st.columns(3, border=True)
with cols[0]:
    st.caption("Data")
    st.markdown(f"**{Path(ss.data_dir).name}** · {n_classes} class folders")
    st.caption(f"`{ss.data_dir}`")
with cols[1]:
    st.caption("Model")
    st.markdown(f"**{ss.model}** · :{present.WEIGHT_COLOURS[weights['weights_source']]}-badge[{weights['weights_source']}]")
    st.caption(f"Weights: {weights['weights_text']}")
with cols[2]:
    st.caption("Freeze plan")
    st.markdown(f"**{layers.freeze_label(ss.freeze)}**")
    st.caption(f"BatchNorm in frozen blocks: {ss.bn_mode}")

if st.button("Start with the sample set", type="primary", icon=":material/rocket_launch:", key="start_sample"):
    ui.use_sample(ss)
    st.switch_page("pages/train.py")
st.caption(
    "Selects the emoji sample set (3 classes, 180 images), efficientnet_lite0 with its bundled "
    "ImageNet weights and a linear probe, then opens the Train page: press **Start training** "
    "there and the curves move within seconds."
)

latest = [r for r in RunStore().list_runs() if r["status"] != "cancelled"]  # a cancelled queue entry never ran
if latest:
    kind, text = present.status_message(latest[0])
    st.divider()
    st.markdown(f"**Latest run** · {fmt.format_time(latest[0]['created'])}")
    getattr(st, kind)(text)
    st.page_link("pages/runs.py", label="All runs", icon=":material/history:")
