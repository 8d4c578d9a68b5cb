"""The framework's exceptions. Each carries a message meant for the user as it is."""


class FrameworkError(Exception):
    """Base of every error the command line reports without a traceback."""


class JobSpecError(FrameworkError):
    """The job file is malformed or names something that is not there."""


class JobFailed(FrameworkError):
    """The job ran but could not produce its result."""


class MasterLost(JobFailed):
    """The Mesos master stayed unreachable longer than ``[framework] master_timeout``."""
