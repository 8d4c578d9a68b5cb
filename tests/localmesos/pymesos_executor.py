"""An executor written with the real pymesos MesosExecutorDriver: RUNNING, then FINISHED with data."""
import sys
import threading

from pymesos import Executor, MesosExecutorDriver, encode_data, decode_data


class EchoExecutor(Executor):
    def launchTask(self, driver, task):
        def run():
            driver.sendStatusUpdate({"task_id": task["task_id"], "state": "TASK_RUNNING"})
            payload = decode_data(task["data"]) if task.get("data") else b""
            driver.sendStatusUpdate({"task_id": task["task_id"], "state": "TASK_FINISHED",
                                     "data": encode_data(b"done:" + payload)})
        threading.Thread(target=run, daemon=True).start()

    def frameworkMessage(self, driver, message):
        driver.sendFrameworkMessage(encode_data(b"echo:" + decode_data(message)))


if __name__ == "__main__":
    driver = MesosExecutorDriver(EchoExecutor(), use_addict=True)
    driver.run()
    sys.exit(0)
