"""Large slides: streamed, tiled segmentation with bounded memory (see :func:`segment_slide`)."""

from .pipeline import SlideResult, segment_slide
from .readers import SlideReader, open_slide
from .stream import StreamLabeller, raster_numbering

__all__ = ["SlideReader", "SlideResult", "StreamLabeller", "open_slide", "raster_numbering", "segment_slide"]
