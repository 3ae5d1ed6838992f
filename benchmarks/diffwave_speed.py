"""DiffWave vocoding / training speed, ours vs lmnt-com/diffwave (same as `multidiff bench diffwave`)."""
from multidiff.bench.diffwave_speed import main

if __name__ == "__main__":
    main()
