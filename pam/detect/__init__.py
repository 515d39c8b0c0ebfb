"""From recordings to detections: window arithmetic (``windows``), the loader over
recordings (``dataset``), the network (``model``), checkpoints and their cards
(``checkpoint``), the batched inference loop and commits (``detection``), shards
(``shards``) and the model registry (``registry``)."""
