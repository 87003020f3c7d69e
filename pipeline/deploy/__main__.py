"""``python -m pipeline.deploy -i DICOM_DIR -o OUT`` (the MONAI Deploy App SDK's convention)."""

from pipeline.deploy.app import LungSegApp

if __name__ == "__main__":
    LungSegApp().run()
