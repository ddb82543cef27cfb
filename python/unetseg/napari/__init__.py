"""unetseg in napari (``pip install "unetseg[napari]"``): the npe2 manifest ``napari.yaml`` declares
a "Segment nuclei" and a "Segment slide" dock widget (:mod:`._widget`), a reader for unetseg's
outputs, a writer for Labels layers and the bundled samples (:mod:`._io`). Nothing here is imported
by ``import unetseg``: Qt and napari load only when napari asks for the plugin."""
