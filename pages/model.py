"""Model: pick a backbone, see it block by block, and choose which blocks stay frozen."""

import streamlit as st

from tl_dashboard import charts, data, layers
from tl_dashboard import formatting as fmt
from tl_dashboard import ui_state as ui
from tl_dashboard.backbones import CURATED_BACKBONES, describe_backbone, list_backbones
from tl_dashboard.layers import Block, describe_blocks
from views import present, widgets

ss = st.session_state
ui.require_router(ss, "pages/model.py", st.switch_page, st.query_params.to_dict())


@st.cache_data(ttl=600, show_spinner=False)
def weights_of(name: str) -> dict:
    return describe_backbone(name)


@st.cache_data(show_spinner="Building the network to list its blocks…", max_entries=32)
def blocks_of(name: str, image_size: int, num_classes: int) -> list[Block]:
    return describe_blocks(name, image_size or None, num_classes)


def badge(name: str) -> str:
    src = weights_of(name)["weights_source"]
    return f":{present.WEIGHT_COLOURS.get(src, 'gray')}-badge[{src}]"


def set_spec(spec: str) -> None:
    ss.freeze = spec


def on_preset(n_body: int) -> None:
    first = str(min(max(1, int(ss.first_n)), n_body - 1))
    set_spec({"head": "head", "none": "none", "first": first}.get(ss.w_preset, ss.freeze))


def on_toggle(blocks: list[Block]) -> None:
    frozen = [b.name for b in blocks if b.kind != "head" and ss.get(f"w_frz_{b.name}")]
    set_spec(layers.spec_from_frozen(blocks, frozen))


st.title("Model")

# -- backbone ----------------------------------------------------------------------------------
st.markdown("**Backbones picked for this tool** · where their weights come from on this machine:")
st.markdown("  \n".join(f"{badge(n)} `{n}` · {d}" for n, d in CURATED_BACKBONES.items()))
st.caption(
    ":green-badge[bundled] / :green-badge[hf-cache]: pretrained weights here, offline · "
    ":blue-badge[hub]: downloaded on first use · :orange-badge[none]: starts from random weights."
)

c1, c2 = st.columns([1, 2])
c1.text_input("Search all timm models", placeholder="e.g. resnet, convnext, vit_*", **ui.bind(ss, "model_query"))
options = list(CURATED_BACKBONES)
with widgets.reported("Search failed"):  # a bad wildcard must not break the page
    options = list_backbones(ss.model_query.strip())
if not options:
    c1.caption(f"No timm model matches '{ss.model_query}'.")
if ss.model not in options:
    options = [ss.model, *options]
c2.selectbox(
    "Backbone",
    options,
    format_func=lambda n: f"{n} · {CURATED_BACKBONES.get(n, 'timm model')}",
    help=f"{len(options)} models listed; the curated ones come first.",
    **ui.bind(ss, "model"),
)

info = weights_of(ss.model)
w1, w2 = st.columns([2, 1], vertical_alignment="center")
w1.markdown(f"Weights for **{ss.model}** here: {badge(ss.model)} {info['weights_text']}.")
w2.radio(
    "Start from",
    ["auto", "none"],
    horizontal=True,
    format_func={"auto": "pretrained weights", "none": "random init"}.get,
    help="Random init is for comparison: it shows how much the pretrained weights give you.",
    **ui.bind(ss, "weights"),
)
if info["weights_source"] == "none" and ss.weights == "auto":
    st.warning(
        "No pretrained weights for this model here, so it would start from random weights: a linear "
        "probe on random features learns little. Pick a model with a green badge for real transfer learning.",
        icon=":material/warning:",
    )

# -- blocks ------------------------------------------------------------------------------------
n_classes = max(2, data.class_folder_count(ss.data_dir))
blocks = None
with widgets.reported(f"Cannot list the blocks of {ss.model}"):
    blocks = blocks_of(ss.model, int(ss.image_size), n_classes)
if blocks is None:
    st.stop()
body = [b for b in blocks if b.kind != "head"]
frozen = layers.frozen_from_spec(ss.freeze, blocks)
if layers.preset_of(ss.freeze, blocks) == "custom" and layers.spec_from_frozen(blocks, frozen) != ss.freeze:
    st.info(f"The freeze plan `{ss.freeze}` named blocks this model does not have; it now freezes {len(frozen)} of its {len(body)} blocks.")
    ss.freeze = layers.spec_from_frozen(blocks, frozen)

st.subheader("Freezing")
p1, p2 = st.columns([3, 2], vertical_alignment="bottom")  # preset | N
ss.w_preset = layers.preset_of(ss.freeze, blocks)
presets = [p for p in layers.FREEZE_PRESETS if p != "custom" or ss.w_preset == "custom"]
p1.segmented_control(
    "Preset", presets, format_func=layers.FREEZE_PRESETS.get, key="w_preset", required=True, on_change=on_preset, args=(len(body),)
)
if ss.w_preset == "first":
    ss.first_n = min(max(1, int(ss.freeze)), len(body) - 1)
    p2.slider(
        "N (frozen blocks from the input side)", 1, max(2, len(body) - 1), **ui.bind(ss, "first_n", after=lambda: set_spec(str(ss.first_n)))
    )

trainable = sum(b.params for b in blocks if b.name not in frozen)
frozen_params = sum(b.params for b in blocks if b.name in frozen)
m = st.columns(4)
m[0].metric("Trainable parameters", fmt.format_params(trainable))
m[1].metric("Frozen parameters", fmt.format_params(frozen_params))
m[2].metric("Frozen blocks", f"{len(frozen)} of {len(body)}")
m[3].metric(
    "Plan", {"head": "linear probe", "none": "full fine-tune"}.get(ss.freeze, f"{len(frozen)} frozen"), help=layers.freeze_label(ss.freeze)
)
widgets.plot(charts.blocks_strip_figure(blocks, frozen), "blocks_strip")

size = f"{ss.image_size} px" if ss.image_size else "the model's default input size"
st.markdown(f"**The network, input to output** (output shapes per image for {n_classes} classes at {size})")
widths = [3, 2, 3, 1.5, 2]
head = st.columns(widths)
for col, text in zip(head, ["block", "parameters", "output shape", "state", "freeze"]):
    col.caption(text)
for b in blocks:
    row = st.columns(widths, vertical_alignment="center")
    row[0].markdown(f"`{b.name}`" + (f" :gray[{b.kind}]" if b.kind not in (b.name, "body") else ""))
    row[1].markdown(f"{b.params:,}")
    row[2].markdown(" × ".join(str(d) for d in b.output_shape) if b.output_shape else ":gray[?]")
    row[3].markdown(
        ":gray-badge[:material/ac_unit: frozen]" if b.name in frozen else ":orange-badge[:material/local_fire_department: trains]"
    )
    if b.kind == "head":
        row[4].toggle(
            "always trains",
            value=False,
            disabled=True,
            key="w_frz_head_locked",
            help="The new classifier head is always trained: it starts from zero for your classes.",
        )
    else:
        ss[f"w_frz_{b.name}"] = b.name in frozen
        row[4].toggle(f"Freeze {b.name}", key=f"w_frz_{b.name}", label_visibility="collapsed", on_change=on_toggle, args=(blocks,))

st.subheader("BatchNorm in frozen blocks")
st.radio(
    "BatchNorm statistics",
    ["frozen", "train"],
    horizontal=True,
    format_func={"frozen": "Frozen: keep the pretrained running statistics", "train": "Train: re-estimate them from your batches"}.get,
    **ui.bind(ss, "bn_mode"),
)
st.caption(
    "BatchNorm normalises with a running mean and variance. Frozen keeps ImageNet's (stable, and it "
    "allows the feature cache); Train updates them on your data, which can help unusual images but is "
    "noisy with small batches."
)
st.page_link("pages/train.py", label="Next: train", icon=":material/arrow_forward:")
