"""Data: choose the images (sample, server folder, upload, or build your own) and check them."""

from pathlib import Path

import streamlit as st

from tl_dashboard import charts, data, datasets, importer
from tl_dashboard import ui_state as ui
from tl_dashboard.data import IMAGE_EXTENSIONS, DataError, load_rgb, scan_images
from tl_dashboard.runs import RunStore
from views import widgets

ss = st.session_state
ui.require_router(ss, "pages/data.py", st.switch_page, st.query_params.to_dict())
ss.setdefault("upload_nonce", 0)
store = RunStore()
ws_id = ss.get("ws_id")  # uploads belong to this workspace (views.workspace)


@st.cache_resource
def _scans() -> dict:
    """Scan results shared by every session: (folder, split, signature) -> summary (the 32 newest)."""
    return {}


def scan(data_dir: str, val_fraction: float, seed: int, signature: tuple, progress=None) -> dict:
    """The folder's summary; scanned again only when its signature (files, sizes, times) changes.

    Not ``st.cache_data``: a cached function cannot drive a progress bar made outside it, and a
    first scan of a big folder needs one (new files are checked on every core, then remembered)."""
    key, done = (data_dir, val_fraction, seed, signature), _scans()
    if key in done:
        return done[key]
    with st.spinner("Scanning and checking every image…"):
        split = scan_images(data_dir, val_fraction=val_fraction, seed=seed, progress=progress)
    examples = {c: [] for c in split.classes}
    for s in split.train + split.val:
        if len(examples[split.classes[s.label]]) < 8:
            examples[split.classes[s.label]].append(str(s.path))
    root = split.root
    done[key] = {
        "classes": split.classes,
        "counts": split.counts(),
        "presplit": split.presplit,
        "train": len(split.train),
        "val": len(split.val),
        "examples": examples,
        "skipped": [
            {"file": str(s.path.relative_to(root)) if root in s.path.parents else str(s.path), "reason": s.reason} for s in split.skipped
        ],
    }
    for old in list(done)[:-32]:
        done.pop(old, None)
    return done[key]


def cache_note() -> str:
    """One line: where decoded images and frozen features are cached between runs, and how much."""
    from tl_dashboard import cache

    u = cache.usage()
    return (
        f"Cache of decoded images and frozen features: {cache.human_bytes(u['bytes'])} in {u['entries']} entries "
        f"at `{u['path']}` (bound {cache.human_bytes(u['max_bytes'])}, TL_CACHE_MAX_GB; "
        "`tl-dashboard cache --clear` empties it)."
    )


@st.cache_data(max_entries=256)
def thumbnail(path: str, signature: tuple):
    img = load_rgb(path, draft_size=128)
    img.thumbnail((96, 96))
    return img


def flash(kind: str, text: str) -> None:
    widgets.flash("data", kind, text)


def use_folder(path: Path | str, note: str) -> None:
    ss.data_dir = str(path)
    flash("success", note)


def kept() -> str:
    """The end of a refusal: what stays in use."""
    return f"Not used (the data is still {Path(ss.data_dir).name})"


def on_source() -> None:
    if ss.data_source == "sample":
        ss.data_dir = str(ui.sample_data_dir())


def on_zip() -> None:
    f = ss.get(f"zip_{ss.upload_nonce}")
    if f is None:
        return
    with widgets.reported(f"Could not import {f.name}", page="data"):  # only a usable data set replaces the data
        info = datasets.import_zip_upload(store, ws_id, f.getvalue(), f.name)
        use_folder(
            info["path"],
            f"Imported {info['written']} images in {info['classes']} classes from {f.name} "
            f"into `{info['path']}`" + (f" ({info['skipped']} file(s) skipped)." if info["skipped"] else "."),
        )
    ss.upload_nonce += 1  # a fresh, empty uploader


def on_folder_upload() -> None:
    files = ss.get(f"dir_{ss.upload_nonce}") or []
    if not files:
        return
    name, by_class, loose = importer.sort_folder_upload([(f.name, f.getvalue()) for f in files])
    if not by_class:
        flash("error", "The uploaded folder has no class sub-folders: pick the folder that holds one sub-folder of images per class.")
    else:
        with widgets.reported("Could not use the uploaded folder", page="data"):  # only usable data replaces it
            info = datasets.import_folder_upload(store, ws_id, by_class, name)
            skipped = info["skipped"] + loose
            use_folder(
                info["path"],
                f"Saved {info['written']} images in {info['classes']} classes into "
                f"`{info['path']}`" + (f"; {skipped} file(s) skipped." if skipped else "."),
            )
    ss.upload_nonce += 1


def on_folder() -> None:
    typed = ss.w_data_dir.strip().strip("'\"")
    with widgets.reported(kept(), page="data"):  # PathNotAllowed on a shared server, DataError
        folder = importer.resolve_allowed_path(typed)
        # only usable data replaces the choice; the cached scan is the one the page shows next
        scan(str(folder), float(ss.val_fraction), int(ss.seed), data.folder_signature(folder))
        ss.data_dir = str(folder)


def on_reuse() -> None:
    path = ss.get("reuse_dataset")
    if path:
        use_folder(path, f"Using the data set `{Path(path).name}`.")


def use_built(root: Path) -> None:
    with widgets.reported(kept(), page="data"):  # registered (and offered again) only when it scans as usable
        datasets.register_dataset(store, root, ws_id, root.name, val_fraction=float(ss.val_fraction))
        use_folder(root, f"Using your data set `{root.name}`.")


# -- build your own ----------------------------------------------------------------------------
def builder_classes() -> list[str]:
    root = Path(ss.builder_dir) if ss.builder_dir else None
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root and root.is_dir() else []


def on_create_dataset() -> None:
    names = [importer.safe_name(c, "") for c in ss.get("build_classes", "").split(",")]
    names = list(dict.fromkeys(n for n in names if n))
    if len(names) < 2:
        flash("error", "Name at least two classes, separated by commas (e.g. `thumbs_up, thumbs_down`).")
        return
    with widgets.reported("Could not create the data set folder", page="data"):
        root = importer.new_upload_dir(importer.safe_name(ss.get("build_name", ""), "my_dataset"))
        for n in names:
            (root / n).mkdir(parents=True, exist_ok=True)
        ss.builder_dir = str(root)
        flash("success", f"Created `{root}` with classes {', '.join(names)}. Now add images to each class.")


def on_add_class() -> None:
    name = importer.safe_name(ss.get("build_new_class", ""), "")
    if name and ss.builder_dir:
        (Path(ss.builder_dir) / name).mkdir(parents=True, exist_ok=True)
    ss["build_new_class"] = ""


def save_to_class(key: str) -> None:
    got = ss.get(key)
    files = got if isinstance(got, list) else [got] if got is not None else []
    cls = ss.get("build_target")
    if not files or not cls or not ss.builder_dir:
        return
    with widgets.reported("Could not save the images", page="data"):
        report = importer.save_images([(f.name, f.getvalue()) for f in files], Path(ss.builder_dir) / cls)
        why = f" Skipped: {report.skipped[0].reason}." if report.skipped else ""
        flash("success" if report.written else "warning", f"Added {len(report.written)} image(s) to '{cls}'.{why}")
    ss.upload_nonce += 1


def builder() -> None:
    if not ss.builder_dir:
        st.markdown(
            "Name your classes, then add images to each, by upload or straight from the webcam. "
            "The images are saved as files in a new data set folder that trains like any other."
        )
        c1, c2 = st.columns([1, 2])
        c1.text_input("Data set name", placeholder="my_gestures", key="build_name")
        c2.text_input("Classes, separated by commas", placeholder="thumbs_up, thumbs_down, no_hand", key="build_classes")
        st.button("Create data set", on_click=on_create_dataset, icon=":material/create_new_folder:", key="build_create")
        return
    root = Path(ss.builder_dir)
    classes = builder_classes()
    counts = {c: sum(1 for p in (root / c).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) for c in classes}
    st.markdown(f"Building **{root.name}** in `{root}`: " + " · ".join(f"{c}: **{n}**" for c, n in counts.items()))
    c1, c2 = st.columns([2, 1], vertical_alignment="bottom")
    if classes:
        if ss.get("build_target") not in classes:
            ss["build_target"] = classes[0]
        c1.segmented_control("Add images to", classes, key="build_target", required=True)
    c2.text_input("Add a class", key="build_new_class", on_change=on_add_class, placeholder="new class name")
    if classes:
        up, cam = st.columns(2)
        up.file_uploader(
            f"Upload images for '{ss.build_target}'",
            type=widgets.IMAGE_TYPES,
            accept_multiple_files=True,
            key=f"build_up_{ss.upload_nonce}",
            on_change=save_to_class,
            args=(f"build_up_{ss.upload_nonce}",),
        )
        with cam:
            if st.toggle("Use the webcam", key="build_cam_on"):
                st.camera_input(
                    f"Take a photo for '{ss.build_target}'",
                    key=f"build_cam_{ss.upload_nonce}",
                    on_change=save_to_class,
                    args=(f"build_cam_{ss.upload_nonce}",),
                )
    ready = len(classes) >= 2 and all(n >= 2 for n in counts.values())
    b1, b2 = st.columns([1, 3], vertical_alignment="center")
    b1.button("Train with this data set", type="primary", disabled=not ready, key="build_use", on_click=use_built, args=(root,))
    b2.caption(
        "Needs at least 2 classes with 2 images each; 20+ per class works much better."
        if not ready
        else "Each class gets a fifth of its images held out for validation."
    )
    st.button("Start another data set", key="build_reset", type="tertiary", on_click=lambda: ss.update(builder_dir=None))


# -- the page ----------------------------------------------------------------------------------
st.title("Data")
st.caption(
    "A data set is a folder with one sub-folder of images per class (or `train/` and `val/` folders that each hold the class folders)."
)

st.segmented_control(
    "Where are your images?", list(ui.SOURCES), format_func=ui.SOURCES.get, required=True, **ui.bind(ss, "data_source", after=on_source)
)
source = ss.data_source
if source == "sample":
    st.markdown(
        "**emoji3**: 3 classes (animals, food, vehicles), 60 small pictures each. "
        "Made for a first run: a linear probe learns it in seconds."
    )
elif source == "folder":
    ss.w_data_dir = ss.data_dir
    st.text_input(
        "Folder on this server",
        help="An absolute path, or relative to where the app was started. Press Enter to use it.",
        key="w_data_dir",
        on_change=on_folder,
    )
    try:
        earlier = {d["path"]: f"{d['name']} · {d['classes']} classes · {d['images']} images" for d in datasets.list_datasets(store, ws_id)}
    except OSError:
        earlier = {}
    if earlier:
        st.selectbox(
            "Or reuse a data set you uploaded or built earlier",
            list(earlier),
            index=None,
            key="reuse_dataset",
            format_func=earlier.get,
            placeholder="pick one",
            on_change=on_reuse,
        )
elif source == "upload":
    z, d = st.columns(2)
    z.file_uploader(
        "A zip of class folders",
        type=["zip"],
        key=f"zip_{ss.upload_nonce}",
        on_change=on_zip,
        help="cats/1.jpg, dogs/1.jpg, ... at the top of the zip or inside one folder.",
    )
    d.file_uploader(
        "Or a folder of class folders",
        type=widgets.IMAGE_TYPES,
        accept_multiple_files="directory",
        key=f"dir_{ss.upload_nonce}",
        on_change=on_folder_upload,
        help="Pick the folder that holds one sub-folder per class.",
    )
else:
    builder()

widgets.show_flash("data")

st.divider()
st.subheader(f"Training data: {Path(ss.data_dir).name}")
st.caption(f"`{ss.data_dir}`")
sig = data.folder_signature(ss.data_dir)
bar = st.empty()  # new files are checked on every core; a big folder shows how far it got
try:
    info = scan(
        ss.data_dir,
        float(ss.val_fraction),
        int(ss.seed),
        sig,
        progress=lambda done, total: bar.progress(done / max(total, 1), text=f"Checking images: {done:,} of {total:,}"),
    )
except DataError as exc:
    st.error(str(exc), icon=":material/folder_off:")
    st.stop()
finally:
    bar.empty()

m = st.columns(5)
m[0].metric("Classes", len(info["classes"]))
m[1].metric("Train images", info["train"])
m[2].metric("Validation images", info["val"])
m[3].metric("Skipped files", len(info["skipped"]))
with m[4]:
    if info["presplit"]:
        st.caption("The folder is pre-split into `train/` and `val/`; that split is used as is.")
    else:
        st.slider(
            "Held out for validation",
            0.05,
            0.5,
            step=0.05,
            format="%.2f",
            help="Share of each class kept aside to measure accuracy on images the model never trains on.",
            **ui.bind(ss, "val_fraction"),
        )

st.caption(cache_note())
for warning in data.data_warnings(info["counts"]):
    st.warning(warning, icon=":material/warning:")

left, right = st.columns([2, 3])
with left:
    widgets.plot(charts.class_counts_figure(info["counts"]), "class_counts")
with right:
    st.markdown("**A few images per class**")
    for cls in info["classes"][:12]:
        n = info["counts"][cls]
        st.caption(f"**{cls}** · {n['train']} train · {n['val']} val")
        st.image([thumbnail(p, sig) for p in info["examples"][cls]], width=64)
    if len(info["classes"]) > 12:
        st.caption(f"… and {len(info['classes']) - 12} more classes (all of them are in the chart).")

st.markdown(f"**Skipped files** ({len(info['skipped'])})")
if info["skipped"]:
    st.dataframe(
        info["skipped"],
        hide_index=True,
        key="skipped_table",
        column_config={
            "file": st.column_config.TextColumn("file", width="medium"),
            "reason": st.column_config.TextColumn("reason", width="large"),
        },
    )
else:
    st.caption("None: every file under the folder is a usable image.")
st.page_link("pages/model.py", label="Next: choose the model", icon=":material/arrow_forward:")
