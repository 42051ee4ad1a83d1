"""`ctrlpost fetch-data`: make a dataset folder from a registered data source.

The public entry point is :func:`ctrlpost.data.fetch.runner.fetch_data`. Built-in sources
(registered in :mod:`ctrlpost.builtin`; a plugin may add more):

* ``hdvila`` (:mod:`.hdvila`): HD-VILA-100M records, downloaded from YouTube with pytubefix
  (:mod:`.youtube`) and cut exactly by their spans with ffmpeg (:mod:`.ffmpeg`);
* ``local`` (:mod:`.local`): a folder of videos plus a captions file;
* ``synthetic`` (:mod:`.synthetic`): procedural clips with captions, for tests and the CPU demo.

Every source plans *units* of work (one download, one file, one generated clip), each yielding
one or more clips; :mod:`.runner` runs them on a thread pool with retries, verifies and commits
every clip into the dataset layout (:mod:`ctrlpost.data.layout`), and records it in the
manifest (:mod:`.manifest`).
Nothing here imports cv2 at module level (cv2 is imported inside the functions that decode).
"""
