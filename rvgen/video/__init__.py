"""Video clips: :mod:`rvgen.video.io` reads and writes them (PyAV), :mod:`rvgen.video.flow`
measures their motion (OpenCV's DIS optical flow) for temporally consistent stylisation
(Ruder, Dosovitskiy & Brox 2016). A foundation: it imports no layer of rvgen."""
