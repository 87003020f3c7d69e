"""``python -m pipeline.deploy -i DICOM_DIR -o OUT`` (the MONAI Deploy App SDK's convention).

A MONAI Application Package runs in a container, often under a CPU quota: the network's
threads are fitted to it before the app imports torch (:func:`pipeline.cpus.fit_threads_to_cpus`).
"""

from pipeline.cpus import fit_threads_to_cpus

if __name__ == "__main__":
    fit_threads_to_cpus()
    from pipeline.deploy.app import LungSegApp

    LungSegApp().run()
