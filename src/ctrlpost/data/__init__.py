"""Datasets of clips, captions and T5 embeddings: `fetch-data` (:mod:`ctrlpost.data.fetch`), the
training dataset and loader, and the data checks of `verify`.

Modules (import what you need; nothing is imported here, so `verify` and completion stay fast):

* :mod:`~ctrlpost.data.text` — the reference's embedding pickles, read safely, written atomically;
* :mod:`~ctrlpost.data.layout` — the dataset folder's names;
* :mod:`~ctrlpost.data.buckets` — aspect buckets and how a frame is fitted into one;
* :mod:`~ctrlpost.data.video` — decode, resize, reflection padding;
* :mod:`~ctrlpost.data.dataset` — :class:`ClipDataset`, ``build_dataset``;
* :mod:`~ctrlpost.data.loader` — sharded resumable sampler, ``build_loader``, ``TrainBatches``;
* :mod:`~ctrlpost.data.checks` and :mod:`~ctrlpost.data.preview` — `verify`'s data stage.

``data`` never touches ``torch.distributed``: it receives rank and world size as integers.
"""
