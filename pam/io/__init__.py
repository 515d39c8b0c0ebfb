"""Reading what the recorders wrote: file-name and header conventions (``recorders``),
block-wise audio (``audio``) and the scan of a dump into manifest rows (``manifest``)."""
